package agent

import (
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"time"
)

// Health answers the kubelet's probes (through `sriov-passthrough-agent
// probe`): ready means the kubelet has our devices, live means the agent's
// loop is not stuck.
type Health struct {
	Agent  *Agent
	Server *Server
	// Registration judges readiness when Server is nil: the DRA kubelet
	// plugin, ready once the kubelet registered it.
	Registration interface{ Ready() error }
	// Stall is how long the agent's loop may go without turning before it
	// counts as hung: a step blocked in the kernel (a sysfs read or write
	// that does not return) stops every later look and release.
	Stall time.Duration
	// Started is when the process started; the loop is judged from then
	// until it first turns.
	Started time.Time
	// now is time.Now; tests set it.
	now func() time.Time
}

// Ready says why the kubelet does not have our devices, nil when it does:
// registered with the kubelet that listens now, and at least one list
// sent on ListAndWatch since.
func (h *Health) Ready() error {
	if h.Server == nil {
		return h.Registration.Ready()
	}
	return h.Server.ready()
}

// Live says why the agent's loop counts as hung, nil when it turned within
// Stall.
func (h *Health) Live() error {
	now := time.Now
	if h.now != nil {
		now = h.now
	}
	last := h.Agent.LastTurn()
	if last.Before(h.Started) {
		last = h.Started
	}
	if idle := now().Sub(last); idle > h.Stall {
		return fmt.Errorf("the agent's loop has not turned for %s (limit %s): a step is stuck", idle.Round(time.Second), h.Stall)
	}
	return nil
}

// ServeHTTP answers /readyz and /livez: 200 "ok", or 503 with the reason.
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var err error
	switch r.URL.Path {
	case "/readyz":
		err = h.Ready()
	case "/livez":
		err = h.Live()
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, err)
		return
	}
	fmt.Fprintln(w, "ok")
}

// ready is Health.Ready: see there.
func (s *Server) ready() error {
	s.mu.Lock()
	kubelet, ep, sendsBefore := s.regKubelet, s.regEP, s.regSends
	s.mu.Unlock()
	switch {
	case ep == nil:
		return errors.New("not registered with the kubelet")
	case inode(filepath.Join(s.Dir, kubeletSocket)) != kubelet:
		return errors.New("the kubelet restarted; not registered with the new one yet")
	case ep.sends.Load() == sendsBefore:
		return errors.New("registered, but no device list sent on ListAndWatch yet")
	case ep.streams.Load() == 0:
		return errors.New("registered, but the kubelet holds no ListAndWatch stream open")
	}
	return nil
}
