package state

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/kubevirt/sriov-passthrough-cni/pkg/netdev"
)

// testdata/previous-release.json was written by the release before SR-IOV
// state was recorded (its Store.Save, commit c010840): a DEL that brought
// the PF and one VF home and is still waiting for another VF.
func TestReadsPreviousReleaseRecord(t *testing.T) {
	b, err := os.ReadFile("testdata/previous-release.json")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Decode(b)
	if err != nil {
		t.Fatalf("a record of the previous release is refused: %v", err)
	}
	if r.SRIOV != nil {
		t.Errorf("SRIOV = %+v, want nil (not recorded then)", r.SRIOV)
	}
	if p := r.Pending(); len(p) != 1 || p[0].PCIAddress != "0000:3b:10.0" || !r.Holds() {
		t.Errorf("pending = %+v, holds = %v; want VF 0000:3b:10.0 only", p, r.Holds())
	}
}

// previousDevice and previousRecord are the record as the previous release
// declares it (pkg/state at c010840): what that binary sees of a record
// this release wrote, after a rollback.
type previousDevice struct {
	PCIAddress   string `json:"pciAddress"`
	OriginalName string `json:"originalName"`
	VFIndex      int    `json:"vfIndex"`
	Released     bool   `json:"released,omitempty"`
}

type previousRecord struct {
	Version int              `json:"version"`
	Phase   Phase            `json:"phase"`
	Devices []previousDevice `json:"devices"`
}

// A release whose netdevs are all home but whose SR-IOV restore waits (a
// VF held through vfio) keeps its record. The previous binary, after a
// rollback, must read it (same version) and find nothing to wait for, or
// it would strand the PF: the VFs whose netdevs went away with the SR-IOV
// state are Released as well as Detached.
func TestRecordReadableByPreviousRelease(t *testing.T) {
	r := sample()
	r.Phase = Releasing
	r.NetnsID = netdev.ID{Dev: 4, Ino: 1}
	r.Devices[0].Released = true
	r.Devices[1].Released, r.Devices[1].Detached = true, true
	r.SRIOV = &SRIOV{NumVFs: 1, DriversAutoprobe: true, Blocked: "VF 0000:3b:10.0 held by pid 7 (qemu) through /dev/vfio/12",
		VFs: []VF{{Index: 0, PCIAddress: "0000:3b:10.0", Driver: "igbvf", PFSide: &netdev.VFConfig{MAC: "02:00:00:00:00:01", SpoofCheck: true}}}}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if !r.Holds() {
		t.Fatal("a record whose SR-IOV restore waits must hold its PF")
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var old previousRecord
	if err := json.Unmarshal(b, &old); err != nil {
		t.Fatal(err)
	}
	if old.Version != 1 {
		t.Errorf("version %d: the previous release sets aside anything but 1", old.Version)
	}
	for _, d := range old.Devices {
		if !d.Released {
			t.Errorf("the previous release would wait forever for %s (%s)", d.PCIAddress, d.OriginalName)
		}
	}
}

func TestValidateRejectsBadSRIOV(t *testing.T) {
	for name, mutate := range map[string]func(*SRIOV){
		"bad vf pci":       func(s *SRIOV) { s.VFs[0].PCIAddress = "../../0000:3c:00.0" },
		"dup vf pci":       func(s *SRIOV) { s.VFs = append(s.VFs, s.VFs[0]); s.NumVFs = 2 },
		"driver path":      func(s *SRIOV) { s.VFs[0].Driver = "../igb" },
		"override newline": func(s *SRIOV) { s.VFs[0].DriverOverride = "vfio-pci\nigb" },
		"more vfs than n":  func(s *SRIOV) { s.NumVFs = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			r := sample()
			r.SRIOV = &SRIOV{NumVFs: 1, VFs: []VF{{Index: 0, PCIAddress: "0000:3b:10.0", Driver: "igbvf"}}}
			mutate(r.SRIOV)
			if err := r.Validate(); err == nil {
				t.Error("accepted")
			}
		})
	}
}
