package agent

import (
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Metrics keeps the numbers the agent serves in the Prometheus text format
// (version 0.0.4), written by hand: a handful of gauges do not need a
// client library in the image.
type Metrics struct {
	mu          sync.Mutex
	byPhase     map[Phase]int
	healthy     int
	pending     int
	lastRelease time.Duration
	released    int
}

// Set records one look at the node.
func (m *Metrics) Set(pfs []PF) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.byPhase = map[Phase]int{}
	m.pending, m.healthy = 0, 0
	for _, p := range pfs {
		m.byPhase[p.Phase]++
		// What the kubelet is told (PF.Healthy, as ListAndWatch sends it),
		// not a second reading of the phases.
		if p.Advertised() && p.Healthy() {
			m.healthy++
		}
		if p.Phase == Releasing {
			m.pending++
		}
	}
}

// Released records releases the agent finished and how long it took.
func (m *Metrics) Released(n int, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.released += n
	m.lastRelease = took
}

// ServeHTTP writes the metrics.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	fmt.Fprintf(w, "# HELP sriovpt_pfs SR-IOV PFs on this node by state (free on the host, held by an attachment, unhealthy, ineligible).\n")
	fmt.Fprintf(w, "# TYPE sriovpt_pfs gauge\n")
	fmt.Fprintf(w, "sriovpt_pfs{state=\"free\"} %d\n", m.byPhase[Free])
	fmt.Fprintf(w, "sriovpt_pfs{state=\"held\"} %d\n", m.byPhase[Attached]+m.byPhase[Adding])
	fmt.Fprintf(w, "sriovpt_pfs{state=\"unhealthy\"} %d\n", m.byPhase[Releasing]+m.byPhase[Missing]+m.byPhase[OffBaseline])
	fmt.Fprintf(w, "sriovpt_pfs{state=\"ineligible\"} %d\n", m.byPhase[Ineligible])
	fmt.Fprintf(w, "# HELP sriovpt_pfs_healthy PFs advertised to the kubelet as Healthy.\n")
	fmt.Fprintf(w, "# TYPE sriovpt_pfs_healthy gauge\n")
	fmt.Fprintf(w, "sriovpt_pfs_healthy %d\n", m.healthy)
	fmt.Fprintf(w, "# HELP sriovpt_releases_pending Attachments whose release waits for a device to come back.\n")
	fmt.Fprintf(w, "# TYPE sriovpt_releases_pending gauge\n")
	fmt.Fprintf(w, "sriovpt_releases_pending %d\n", m.pending)
	fmt.Fprintf(w, "# HELP sriovpt_releases_finished_total Releases the agent finished when devices came back or pods vanished.\n")
	fmt.Fprintf(w, "# TYPE sriovpt_releases_finished_total counter\n")
	fmt.Fprintf(w, "sriovpt_releases_finished_total %d\n", m.released)
	fmt.Fprintf(w, "# HELP sriovpt_last_release_duration_seconds How long the agent's last finished release took, under the lock.\n")
	fmt.Fprintf(w, "# TYPE sriovpt_last_release_duration_seconds gauge\n")
	fmt.Fprintf(w, "sriovpt_last_release_duration_seconds %g\n", m.lastRelease.Seconds())
}
