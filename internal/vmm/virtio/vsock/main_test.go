package vsock

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	checkInvariants = true // every event loop round of every test checks its bookkeeping
	os.Exit(m.Run())
}
