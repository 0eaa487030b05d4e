package virtio

import (
	"bytes"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLimitLogs(t *testing.T) {
	var buf bytes.Buffer
	log := LimitLogs(slog.New(slog.NewTextHandler(&buf, nil))).With("device", 2)
	for range 100 {
		log.Warn("bad request")
	}
	// The bucket refills while the loop runs, so allow a few more on a
	// slow machine; far fewer than 100 must pass either way.
	if got := strings.Count(buf.String(), "bad request"); got > logBurst+10 || got < logBurst {
		t.Fatalf("%d records passed a burst of 100, want about %d", got, logBurst)
	}
	passed := strings.Count(buf.String(), "bad request")
	buf.Reset()
	time.Sleep(time.Second / logRate * 2)
	log.Warn("later")
	out := buf.String()
	if want := "suppressed=" + strconv.Itoa(100-passed); !strings.Contains(out, want) || !strings.Contains(out, "device=2") {
		t.Errorf("record after the pause: %q, want it to carry %s and the logger's attrs", out, want)
	}
}
