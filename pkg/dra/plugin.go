package dra

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
)

// Plugin serves a Driver to the kubelet (registration and the DRA gRPC
// service, through kubeletplugin) and publishes its slice through the API
// server, until its context ends.
type Plugin struct {
	Driver *Driver
	Client kubernetes.Interface
	// RegistrarDir is the kubelet's plugin registration directory, DataDir
	// the directory of the driver's DRA socket; "" is the kubelet's
	// default (/var/lib/kubelet/plugins_registry,
	// /var/lib/kubelet/plugins/<driver>).
	RegistrarDir, DataDir string
	// PodUID is the agent pod's UID ("" outside a pod). With it, the
	// helper names its registration and DRA sockets after the pod
	// (kubeletplugin.RollingUpdate), so during a DaemonSet's surge the old
	// and the new agent pod on a node each keep their own sockets and the
	// kubelet talks to both; without it, the new pod's sockets would take
	// the old pod's paths, and the old pod's shutdown would remove them.
	// The driver keeps no state between calls but the claim checkpoint,
	// and the helper serializes calls across both pods by a file lock.
	PodUID string

	mu     sync.Mutex
	helper *kubeletplugin.Helper
}

// Run registers with the kubelet and serves until ctx ends or the helper
// fails, then stops serving. Slices stay published when it returns: an
// agent that restarts publishes them again, and the kubelet removes a
// driver's slices itself some time after the driver unregistered.
func (p *Plugin) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p.Driver.Fatal = func(err error) { cancel(err) }
	opts := []kubeletplugin.Option{
		kubeletplugin.DriverName(DriverName),
		kubeletplugin.KubeClient(p.Client),
		kubeletplugin.NodeName(p.Driver.NodeName),
	}
	if p.RegistrarDir != "" {
		opts = append(opts, kubeletplugin.RegistrarDirectoryPath(p.RegistrarDir))
	}
	if p.DataDir != "" {
		opts = append(opts, kubeletplugin.PluginDataDirectoryPath(p.DataDir))
	}
	if p.PodUID != "" {
		opts = append(opts, kubeletplugin.RollingUpdate(types.UID(p.PodUID)))
	}
	h, err := kubeletplugin.Start(ctx, p.Driver, opts...)
	if err != nil {
		return fmt.Errorf("start the DRA kubelet plugin: %w", err)
	}
	p.mu.Lock()
	p.helper = h
	p.mu.Unlock()
	p.Driver.SetPublisher(h)
	<-ctx.Done()
	h.Stop()
	if cause := context.Cause(ctx); !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}

// Ready says why the kubelet does not use the driver yet, nil when it
// registered it.
func (p *Plugin) Ready() error {
	p.mu.Lock()
	h := p.helper
	p.mu.Unlock()
	if h == nil {
		return errors.New("the DRA kubelet plugin has not started")
	}
	switch st := h.RegistrationStatus(); {
	case st == nil:
		return errors.New("not registered with the kubelet as a DRA plugin yet")
	case !st.PluginRegistered:
		return fmt.Errorf("the kubelet refused the DRA plugin: %s", st.Error)
	}
	return nil
}
