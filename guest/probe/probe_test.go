package probe

import (
	"context"
	"debug/elf"
	"testing"
)

func TestBuild(t *testing.T) {
	path, err := Build(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Entry != 0x1000000 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Errorf("probe ELF: got entry %#x machine %v type %v, want entry 0x1000000 EM_X86_64 ET_EXEC", f.Entry, f.Machine, f.Type)
	}
}
