//go:build race

package shim_test

// raceEnabled builds the shim binary with the race detector too, so that
// the supervisor's goroutines are checked in the race run of the suite.
const raceEnabled = true
