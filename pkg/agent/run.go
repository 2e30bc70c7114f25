package agent

import (
	"context"
	"errors"
)

// Runner serves what the agent publishes to the kubelet until its context
// ends: the device plugin's Server, or the DRA kubelet plugin.
type Runner interface {
	Run(ctx context.Context) error
}

// Run runs the agent and the server of its device plugin (or its DRA
// plugin) until ctx ends or either of them fails, and returns only once
// both have stopped, in order: the agent first (its watchers and its loop:
// no more looks, no more lists published), then the server (its gRPC
// servers, then its socket). A process that returned as soon as one of
// them did would exit while the server was still stopping, leaving a
// socket the kubelet dials.
func Run(ctx context.Context, a *Agent, srv Runner) error {
	agentCtx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	srvCtx, stopServer := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServer()
	agentDone, srvDone := make(chan error, 1), make(chan error, 1)
	go func() { agentDone <- a.Run(agentCtx) }()
	go func() { srvDone <- srv.Run(srvCtx) }()
	select {
	case err := <-agentDone:
		stopServer()
		return errors.Join(err, <-srvDone)
	case err := <-srvDone:
		stopAgent()
		return errors.Join(<-agentDone, err)
	}
}
