package agent

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
)

var statusPFs = []PF{
	{PCI: "0000:3b:00.0", Name: "ens1", VFs: 4, Phase: Attached,
		Holder: &Holder{Pod: "ci/job-1", ContainerID: "0123456789abcdef0123", IfName: "net1", Netns: "/var/run/netns/cni-1"}},
	{PCI: "0000:3c:00.0", Name: "ens2", VFs: 0, Phase: Free},
	{PCI: "0000:3d:00.0", Name: "ens3", VFs: 2, Phase: Releasing, Why: "release pending: not back on the host yet: ens3 (0000:3d:00.0)"},
	{PCI: "0000:3e:00.0", Name: "eno1", Phase: Ineligible, Why: "uplink: eno1 carries a default route"},
}

func TestStatusOneLinePerPF(t *testing.T) {
	var out bytes.Buffer
	if err := WriteStatus(&out, statusPFs, false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	t.Logf("\n%s", out.String())
	if len(lines) != 1+len(statusPFs) || !strings.HasPrefix(lines[0], "PCI") {
		t.Fatalf("want a header and one line per PF:\n%s", out.String())
	}
	for i, want := range []string{
		`^0000:3b:00.0\s+ens1\s+4\s+attached\s+pod ci/job-1 container 0123456789ab net1 netns /var/run/netns/cni-1\s+-$`,
		`^0000:3c:00.0\s+ens2\s+0\s+free\s+-\s+-$`,
		`^0000:3d:00.0\s+ens3\s+2\s+releasing\s+-\s+release pending: not back on the host yet: ens3 \(0000:3d:00.0\)$`,
		`^0000:3e:00.0\s+eno1\s+0\s+ineligible\s+-\s+uplink: eno1 carries a default route$`,
	} {
		if !regexp.MustCompile(want).MatchString(lines[i+1]) {
			t.Errorf("line %d %q does not match %s", i+1, lines[i+1], want)
		}
	}
	out.Reset()
	if err := WriteStatus(&out, statusPFs, true); err != nil {
		t.Fatal(err)
	}
	var back []PF
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || len(back) != len(statusPFs) || back[0].Holder.Pod != "ci/job-1" || back[2].Why == "" {
		t.Errorf("-o json: %v %+v", err, back)
	}
}

func TestMetricsInTheTextFormat(t *testing.T) {
	m := &Metrics{}
	m.Set(statusPFs)
	m.Released(2, 1500*time.Millisecond)
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`sriovpt_pfs{state="free"} 1`, `sriovpt_pfs{state="held"} 1`, `sriovpt_pfs{state="unhealthy"} 1`,
		`sriovpt_pfs{state="ineligible"} 1`, "sriovpt_pfs_healthy 2", "sriovpt_releases_pending 1",
		"sriovpt_releases_finished_total 2", "sriovpt_last_release_duration_seconds 1.5",
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	// Every sample belongs to a family declared with HELP and TYPE.
	declared := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			declared[strings.Fields(f)[0]] = true
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		name := regexp.MustCompile(`^[a-z_]+`).FindString(line)
		if !declared[name] {
			t.Errorf("sample %q before its # TYPE", line)
		}
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("content type %q", ct)
	}
}
