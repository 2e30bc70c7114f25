// Package failpoint lets crash tests kill the plugin at a chosen step.
//
// Hit(name) marks a step that changes the world (a record written, a
// device moved or renamed). In a normal build it is an empty function the
// compiler inlines away: the production binary carries none of this code
// (TestProductionBinaryHasNoFailpoints proves it). Built with
// `-tags failpoints`, Hit kills its own process with SIGKILL when the
// environment variable SRIOVPT_FAILPOINT names the step: no deferred
// function, no rollback, no flush runs, as when the runtime or the OOM
// killer ends a plugin. "name@N" kills on the Nth hit of name in the
// process (steps done once per device are hit once per device); plain
// "name" is "name@1".
//
// A test harness that must see what the dying process held (its private
// transit netns, see test/stress) sets SRIOVPT_FAILPOINT_NOTIFY to a file
// descriptor: Hit then writes the step's name there and stops the process
// with SIGSTOP, and the harness sends the SIGKILL. Either way the process
// runs no further code of its own. SRIOVPT_FAILPOINT_TRACE, also a file
// descriptor, receives every step's name as it is passed, so a test learns
// from one run which steps an operation takes and how often.
package failpoint

// Env is the variable that selects the step to die at.
const Env = "SRIOVPT_FAILPOINT"

// NotifyEnv names a file descriptor to report the hit on before stopping.
const NotifyEnv = "SRIOVPT_FAILPOINT_NOTIFY"

// TraceEnv names a file descriptor that receives the name of every
// failpoint passed, one per line.
const TraceEnv = "SRIOVPT_FAILPOINT_TRACE"
