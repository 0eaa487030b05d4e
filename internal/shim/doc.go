// Package shim is thaw-shim, the per-VM supervisor, and thawd's side of it.
// A shim owns one VM's UFFD page server and its VMM, shares their fate, and
// answers thawd on a control socket. It runs in its own session,
// so it outlives thawd exiting, restarting or being killed; thawd finds it
// again with Attach.
//
// # Life of a shim (Run)
//
//  1. Bind the control socket (<dir>/shim.sock); write the status file.
//  2. For pages serve/record: map the memory file, load the access log (or
//     create the recorder) and bind the UFFD socket (<dir>/uffd.sock)
//     before the VMM exists, so its connect cannot race the bind.
//  3. Start the VMM, its output (serial console and log) in <dir>/vmm.log.
//     The builtin VMM (Config.VMM "builtin", thawd's default) runs in the
//     shim's own process: cmd/thaw-shim injects it (Builtin, built on
//     internal/vmm/process), so one sandbox is one process and one Go
//     runtime; Status.VMMPID is then the shim's pid. Any other VMM is a
//     binary: `<vmm> --api-sock <dir>/api.sock [--id ID] args...`, in its
//     own process group, killed by the kernel if the shim dies
//     (PDEATHSIG): a VMM without its page server would freeze on its next
//     fault. A real firecracker works unchanged.
//  4. Wait for GET / on the API socket (ReadyTimeout): state running.
//  5. Accept the handshake (HandshakeTimeout, counted from 4); thawd's
//     PUT /snapshot/load makes the VMM send it. Then serve pages: prefetch
//     in the access log's order (or file order), on demand only, or
//     recording (no prefetch, each first install written to the log, the
//     settle detector watching).
//  6. Supervise until collected (below).
//
// The shim never loads the snapshot itself: thawd does, through the VMM's
// API socket.
//
// # Fate-sharing
//
// A page-server failure (no handshake in time, a malformed one, one that
// does not fit the memory file, a fault the server cannot answer) kills
// the VMM (a child's process group with SIGKILL; the builtin VMM with its
// Kill, which also releases its userfaultfd so that no thread stays
// blocked on guest memory) and sets state failed with the reason. So does a VMM whose API never answers. A VMM that exits is
// reaped (after its process group is killed, so nothing it forked
// survives), the page server stops, the recording is closed, and the
// status becomes final (done). The shim then stays until thawd collects
// the status, or for CollectTimeout (default one hour) if nobody does;
// either way it writes every status change to <dir>/shim-status.json
// first (ReadStatusFile), so a thawd that comes back after the shim left
// still learns how the VM ended. Collecting removes the sockets and the
// status file; the two logs stay for thawd to delete with the directory.
// SIGTERM or SIGINT to the shim stops the VMM (as POST /stop would) and
// makes the shim exit without waiting for a collect.
//
// # Control API
//
// HTTP/1.1 with JSON bodies on the unix socket <dir>/shim.sock. Errors are
// {"error": "..."} with 400 (bad request), 404 (no such route), 409 (not
// possible in this state) or 504 (the caller's request ended while
// waiting). Calls that wait do so until the condition holds or the
// client's request ends, which is how thawd bounds them.
//
//	GET  /info       Info: id, shim pid, directory, API and UFFD sockets, page mode, GOMAXPROCS.
//	GET  /status     Status, at once.
//	GET  /ready      Status once the VMM's API answers (running) or the VM is over.
//	GET  /handshake  Verdict once it is known: ok, failed (with the reason),
//	                 or none (no page server). ?wait=false answers at once,
//	                 possibly pending. A failed verdict after a successful
//	                 snapshot load is a failed restore.
//	GET  /stats      PageStats: "serving" plus the page server's counters
//	                 (uffd.Stats, under its Go field names; durations in
//	                 nanoseconds). Kept after the VMM exits.
//	GET  /settle     SettleStatus once the recording has settled or the VM
//	                 is over; ?wait=false answers at once. 409 unless pages record.
//	POST /stop       {"grace_ms": N} (optional): SIGTERM to the VMM's process
//	                 group (the builtin VMM: its Stop), SIGKILL (its Kill)
//	                 after the grace (default StopGrace); answers
//	                 the final Status once the VMM is gone.
//	GET  /wait       the final Status once the VMM is gone.
//	POST /collect    acknowledges the final Status (409 while the VMM runs);
//	                 answers it, then the shim removes its sockets and status
//	                 file and exits.
//
// Status.State is starting, running, vmm-exited (with Exit: code or
// signal; the builtin VMM reports what a thaw-vmm process would: 0 for a
// guest shutdown or a stop, 1 for a failed VM, SIGKILL when killed) or failed (with Reason, and Exit once the killed VMM is reaped).
// Status.Done says the VMM is gone and nothing but collection will change.
// Status.Check states the invariants; the shim checks every status it
// publishes, and ReadStatusFile refuses a file that breaks one.
//
// # Launching
//
// thawd calls Start with the thaw-shim binary and a Config: the shim is
// started with setsid, its stdout and stderr on <dir>/shim.log, and Start
// returns once the VMM's API answers, with a Handle (pid, sockets, and a
// Client). A VM that ends before that comes back as a *StartError after
// the shim has been collected; a Start whose context ends kills the shim.
// After a thawd restart, Attach(ctx, <dir>/shim.sock) gives a Handle
// again; a shim's identity across restarts is its pid and start time
// (thawd's internal/daemon/proc).
package shim
