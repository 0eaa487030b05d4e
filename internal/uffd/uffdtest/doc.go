// Package uffdtest plays the VMM's side of the page server in a second
// process, for internal/uffd's tests and the thaw-pagebench command. A
// process re-executes its own binary with Env set; MaybeRunVMM, called first
// thing in TestMain or main, turns that child into a fake VMM: it maps
// anonymous guest regions, registers them with uffd.Register, sends the
// Firecracker handshake with uffd.SendHandshakeTo, touches pages from many
// threads as vCPUs would, checks every byte against the memory file, and
// reports a Result on stdout. It also writes deterministic memory files.
package uffdtest
