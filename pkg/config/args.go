package config

import (
	"fmt"
	"log/slog"

	"github.com/containernetworking/cni/pkg/types"
)

// K8sArgs are the CNI_ARGS keys multus and the kubelet send. Other keys are
// rejected unless the runtime also sends IgnoreUnknown=1, as multus does.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive // CNI_ARGS key
}

// Pod names the pod an attachment belongs to, for state records and logs.
type Pod struct {
	Namespace        string `json:"namespace,omitempty"`
	Name             string `json:"name,omitempty"`
	UID              string `json:"uid,omitempty"`
	InfraContainerID string `json:"infraContainerID,omitempty"`
}

// String is "namespace/name", or "unknown pod" when the runtime sent neither.
func (p Pod) String() string {
	if p.Namespace == "" && p.Name == "" {
		return "unknown pod"
	}
	return p.Namespace + "/" + p.Name
}

// ParseArgs decodes CNI_ARGS ("K=V;K=V"). The error is a *types.Error.
func ParseArgs(args string) (Pod, error) {
	var k K8sArgs
	if err := types.LoadArgs(args, &k); err != nil {
		return Pod{}, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_ARGS", err.Error())
	}
	return Pod{
		Namespace:        string(k.K8S_POD_NAMESPACE),
		Name:             string(k.K8S_POD_NAME),
		UID:              string(k.K8S_POD_UID),
		InfraContainerID: string(k.K8S_POD_INFRA_CONTAINER_ID),
	}, nil
}

// ParseLogLevel maps the logLevel field to a slog level.
func ParseLogLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf(`field "logLevel": %q is not one of debug, info, warn, error`, s)
}
