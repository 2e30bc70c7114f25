//go:build e2e

package e2e

import (
	"context"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// GC releases every attachment that is not in cni.dev/valid-attachments, as
// DEL would, even while the pods' netns still exist. The GCs here run through
// a libcni with an empty cache (a runtime that lost its own records), so
// libcni issues no DELs of its own and the plugin's GC does all the work.
func TestGCReleasesWhatIsNotValid(t *testing.T) {
	h := newHarness(t, nil)
	pa, pb := h.newPod(), h.newPod()
	ra := h.mustLibAdd(pa, "net1")
	rb := h.mustLibAdd(pb, "net1")
	a := wholePF(pa, "net1", pfs[0])
	b := wholePF(pb, "net1", pfs[1])
	assertAttached(t, a, ra)
	assertAttached(t, b, rb)

	fresh := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, t.TempDir(), h.exec())
	gc := func(valid ...types.GCAttachment) {
		t.Helper()
		if valid == nil {
			valid = []types.GCAttachment{}
		}
		if err := fresh.GCNetworkList(context.Background(), h.list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
			t.Fatalf("GC: %v", err)
		}
	}

	gc(types.GCAttachment{ContainerID: h.rt(pa, "net1").ContainerID, IfName: "net1"})
	assertAttached(t, a, nil)
	assertPodHolds(t, pa, a.pcis()...)
	assertPodHolds(t, pb)
	assertRestored(t, b.pcis()...)
	if n := len(h.records()); n != 1 {
		t.Errorf("after GC keeping one attachment the state dir holds %d records: %v", n, h.records())
	}

	gc()
	assertPodHolds(t, pa)
	assertRestored(t, a.pcis()...)
	if r := h.records(); len(r) != 0 {
		t.Errorf("state records left after GC with no valid attachments: %v", r)
	}
}
