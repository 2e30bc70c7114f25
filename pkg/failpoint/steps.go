package failpoint

import "strconv"

// Step names a world-changing step of the plugin. The names are the only
// contract between the plugin, the e2e crash tests and test/stress: use
// these constants, never the strings.
type Step string

// At selects the nth hit of s in one process ("name@N"): steps done once
// per device are hit once per device.
func (s Step) At(n int) string { return string(s) + "@" + strconv.Itoa(n) }

// The steps of ADD.
const (
	AddRecordAdding   Step = "add/record-adding"   // the record is on disk, phase adding
	AddTagged         Step = "add/tagged"          // a device has its altname tag (per device)
	AddToTransit      Step = "add/to-transit"      // a device whose host name the pod has is in transit (per device)
	AddRenamed        Step = "add/renamed"         // the renamed devices have their pod names
	AddToPod          Step = "add/to-pod"          // a device is in the pod (per device)
	AddUp             Step = "add/up"              // a device is up in the pod (per device)
	AddRecordAttached Step = "add/record-attached" // the record says attached
)

// The steps of the release path (DEL, GC, ADD's rollback, repair).
const (
	ReleaseRecordReleasing Step = "release/record-releasing" // the record says releasing
	ReleaseRenamedInPlace  Step = "release/renamed-in-place" // a device has its host name where it was found (per device)
	ReleaseToTransit       Step = "release/to-transit"       // a device is in transit (per device)
	ReleaseRenamed         Step = "release/renamed"          // the devices in transit have their host names
	ReleaseToHost          Step = "release/to-host"          // a device is on the host (per device)
	ReleaseRestored        Step = "release/restored"         // a device has its MTU, state, no tag (per device)
	ReleaseRecordRemoved   Step = "release/record-removed"   // the record is gone
	ReleaseSRIOVRestored   Step = "release/sriov-restored"   // the PF's SR-IOV state is as recorded
)

// The steps of giving a PF's SR-IOV state back that only a kernel behind
// sysfs reaches (a fake sysfs file does nothing when written): the e2e
// crash tests kill the plugin at them in the VM.
const (
	ReleaseSRIOVNumVFs Step = "release/sriov-numvfs" // the VFs are re-created (sriov_numvfs through 0)
	ReleaseSRIOVRebind Step = "release/sriov-rebind" // a VF is back on its driver (per VF)
)

// All lists every step test/stress reaches, so its crash tests cover a new
// one without an edit.
var All = []Step{
	AddRecordAdding, AddTagged, AddToTransit, AddRenamed, AddToPod, AddUp, AddRecordAttached,
	ReleaseRecordReleasing, ReleaseRenamedInPlace, ReleaseToTransit, ReleaseRenamed, ReleaseToHost, ReleaseRestored, ReleaseRecordRemoved,
	ReleaseSRIOVRestored,
}

// VMOnly lists the steps only the VM's crash tests reach.
var VMOnly = []Step{ReleaseSRIOVNumVFs, ReleaseSRIOVRebind}
