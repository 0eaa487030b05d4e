package testenv

import "testing"

func TestStrictRejectsGarbage(t *testing.T) {
	t.Setenv(StrictEnv, "sometimes")
	if _, err := Strict(); err == nil {
		t.Fatalf("Strict() with %s=sometimes: got nil error, want one", StrictEnv)
	}
}

func TestProbesAgreeWithRequire(t *testing.T) {
	t.Logf("kvm: %v (pvm: %v), uffd: %v", kvmErr(), KVMIsPVM(), uffdErr())
	if HaveKVM() != (kvmErr() == nil) {
		t.Fatal("HaveKVM disagrees with the probe")
	}
}
