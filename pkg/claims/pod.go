package claims

import (
	"fmt"
	"strings"
)

// AmbiguousError says that more than one prepared claim is reserved for a
// pod of this namespace and name, and the runtime did not say which pod it
// is (no K8S_POD_UID: multus v3.x does not pass it). It happens when a pod
// was force-deleted and a pod of the same name followed before the kubelet
// unprepared the old pod's claim; it ends when that claim is unprepared.
type AmbiguousError struct {
	Namespace, Name string
	Claims          []Entry
}

func (e *AmbiguousError) Error() string {
	var each []string
	for _, c := range e.Claims {
		var pods []string
		for _, p := range c.Pods {
			if p.Namespace == e.Namespace && p.Name == e.Name {
				pods = append(pods, p.UID)
			}
		}
		each = append(each, fmt.Sprintf("claim %s for pod uid %s, PFs %s", c.Claim, strings.Join(pods, ","), strings.Join(c.PFs, ",")))
	}
	return fmt.Sprintf("%d prepared claims are reserved for a pod named %s/%s: %s", len(e.Claims), e.Namespace, e.Name, strings.Join(each, "; "))
}

// ForPod finds the prepared claim of the pod an ADD is for, nil when no
// claim is reserved for it. With the pod's UID it is the claim reserved for
// exactly that pod: a predecessor of the same name never matches. Without
// it, the pod is known only by namespace and name: one claim reserved for
// that name is the pod's (a pod's claims are prepared before its sandbox
// exists, so a pod of that name being set up has its claim here), two or
// more are an *AmbiguousError, as the plugin cannot tell the new pod's
// claim from its predecessor's.
func ForPod(entries []Entry, namespace, name, uid string) (*Entry, error) {
	if namespace == "" || name == "" {
		return nil, nil
	}
	var byName []Entry
	for _, e := range entries {
		for _, p := range e.Pods {
			if p.Namespace != namespace || p.Name != name {
				continue
			}
			if uid != "" && p.UID == uid {
				return &e, nil
			}
			byName = append(byName, e)
			break
		}
	}
	switch {
	case uid != "" || len(byName) == 0:
		return nil, nil
	case len(byName) == 1:
		return &byName[0], nil
	}
	return nil, &AmbiguousError{Namespace: namespace, Name: name, Claims: byName}
}
