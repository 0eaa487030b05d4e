package proc

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	tail := " S 1 100 100 0 -1 4194560 200 0 0 0 5 3 0 0 20 0 1 0 987654 1000 100 18446744073709551615"
	tests := []struct {
		in      string
		want    Stat
		wantErr string
	}{
		{"42 (thaw-shim)" + tail, Stat{PID: 42, Comm: "thaw-shim", State: 'S', PPID: 1, PGID: 100, StartTime: 987654}, ""},
		{"7 (a) b) (c)" + tail, Stat{PID: 7, Comm: "a) b) (c", State: 'S', PPID: 1, PGID: 100, StartTime: 987654}, ""},
		{"7 ()" + tail, Stat{PID: 7, Comm: "", State: 'S', PPID: 1, PGID: 100, StartTime: 987654}, ""},
		{"7 (x) S x 100 100 0 -1 4194560 200 0 0 0 5 3 0 0 20 0 1 0 1 2", Stat{}, "bad parent pid"},
		{"7 (x) S 1 -100 100 0 -1 4194560 200 0 0 0 5 3 0 0 20 0 1 0 1 2", Stat{}, "bad process group"},
		{"7 (x) Z 1 2", Stat{}, "fields after comm"},
		{"x (y)" + tail, Stat{}, "bad pid"},
		{"7 no comm", Stat{}, "no (comm)"},
		{"7 (x) SS 1 100 100 0 -1 4194560 200 0 0 0 5 3 0 0 20 0 1 0 1 2", Stat{}, "bad state"},
		{"7 (x) S 1 100 100 0 -1 4194560 200 0 0 0 5 3 0 0 20 0 1 0 -5 2", Stat{}, "bad start time"},
	}
	for _, tt := range tests {
		got, err := ParseStat([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseStat(%q): got %v, want error containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseStat(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("42 (thaw-shim) S 1 100 100 0 -1 4194560 200 0 0 0 5 3 0 0 20 0 1 0 987654 1000\n"))
	f.Add([]byte("1 ((()))) R 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseStat(data)
		if err != nil {
			return
		}
		if st.PID <= 0 {
			t.Fatalf("parsed pid %d", st.PID)
		}
		// Whatever parsed must survive being written back in the kernel's format.
		again, err := ParseStat(fmt.Appendf(nil, "%d (%s) %s %d %d 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 %d 0", st.PID, st.Comm, []byte{st.State}, st.PPID, st.PGID, st.StartTime))
		if err != nil || again != st {
			t.Fatalf("reformatted %+v parsed as %+v, %v", st, again, err)
		}
	})
}

func TestSelf(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.StartTime == 0 || st.State == 'Z' || st.PPID != os.Getppid() || st.PGID != syscall.Getpgrp() {
		t.Errorf("own stat = %+v, want a start time, not a zombie, parent %d, process group %d", st, os.Getppid(), syscall.Getpgrp())
	}
	alive, err := Alive(os.Getpid(), st.StartTime)
	if err != nil || !alive {
		t.Errorf("Alive(self) = %v, %v; want true", alive, err)
	}
	// The same pid with another start time is another process.
	if alive, err := Alive(os.Getpid(), st.StartTime+1); err != nil || alive {
		t.Errorf("Alive(self, wrong start) = %v, %v; want false", alive, err)
	}
}

// TestExitedChild: a child that exited is not alive, both as a zombie (not
// yet reaped) and once reaped.
func TestExitedChild(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	st, err := ReadStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if alive, err := Alive(pid, st.StartTime); err != nil || !alive {
		t.Fatalf("running child: Alive = %v, %v; want true", alive, err)
	}
	cmd.Process.Kill()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := ReadStat(pid)
		if err != nil {
			t.Fatal(err)
		}
		if s.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child never became a zombie (state %c)", s.State)
		}
		time.Sleep(time.Millisecond)
	}
	if alive, err := Alive(pid, st.StartTime); err != nil || alive {
		t.Errorf("zombie child: Alive = %v, %v; want false", alive, err)
	}
	cmd.Wait()
	if alive, err := Alive(pid, st.StartTime); err != nil || alive {
		t.Errorf("reaped child: Alive = %v, %v; want false", alive, err)
	}
	if _, err := ReadStat(pid); err == nil {
		t.Errorf("ReadStat(reaped) succeeded")
	}
}
