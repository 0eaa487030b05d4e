package sandbox

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/thawvm/thaw/internal/agentapi"
	"github.com/thawvm/thaw/internal/errdefs"
	"github.com/thawvm/thaw/internal/shim"
)

// warmupTimeout bounds each warm-up command: the agent kills it (and its
// process group) after this long, and the build fails saying so.
const warmupTimeout = 5 * time.Minute

// warmupTail is how much of a failed warm-up command's output its error
// carries.
const warmupTail = 2048

// warmUp runs a recording run's warm-up commands through the agent of the
// VM under h, one after another, with their output going to progress (if
// not nil), so that the pages they touch are faulted in, and recorded,
// while the recording page server runs. A command that cannot start, ends
// with anything but exit code 0 or outlives warmupTimeout fails the run
// with its exit status and the end of its output (failed precondition: the
// template's command is wrong, not the host); a VM that ends meanwhile
// fails it at once, saying how it ended.
func warmUp(ctx context.Context, h *shim.Handle, cmds [][]string, progress io.Writer) error {
	if len(cmds) == 0 {
		return nil
	}
	if progress == nil {
		progress = io.Discard
	}
	ac := agentapi.NewClient(agentapi.VsockDialer(filepath.Join(h.Dir, VsockName), agentapi.DefaultVsockPort))
	defer ac.Close()
	for i, argv := range cmds {
		what := fmt.Sprintf("warm-up command %d/%d (%s)", i+1, len(cmds), quoteArgv(argv))
		fmt.Fprintf(progress, "==> %s\n", what)
		tail := &tailBuffer{max: warmupTail}
		out := io.MultiWriter(progress, tail)
		cctx, cancel := context.WithTimeout(ctx, warmupTimeout+10*time.Second)
		wctx, release := endWithVM(cctx, h, what+" finished")
		ex, err := ac.Exec(wctx, agentapi.ExecRequest{Argv: argv, TimeoutMS: warmupTimeout.Milliseconds()}, nil, out, out)
		err = vmEndedOr(wctx, err)
		release()
		cancel()
		switch {
		case err != nil && agentapi.KindOf(err) == agentapi.KindNotFound:
			return errdefs.FailedPrecondition("%s: %v", what, err)
		case err != nil:
			return fmt.Errorf("%s: %w", what, timeoutKind(cctx, err))
		case ex.Code != 0 || ex.Signal != 0:
			return errdefs.FailedPrecondition("%s ended with %s; its output ended with:\n%s", what, ex, tail.String())
		}
	}
	return nil
}

// quoteArgv shows argv as a shell would need it typed: words without
// special characters as they are, others single-quoted.
func quoteArgv(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
		}) < 0 {
			q[i] = a
			continue
		}
		if strings.IndexFunc(a, func(r rune) bool { return r < ' ' || r == 0x7f }) >= 0 {
			q[i] = strconv.Quote(a) // control characters: Go's escapes say what they are
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// tailBuffer keeps the last max bytes written to it; it is safe for
// concurrent writers (an exec's stdout and stderr).
type tailBuffer struct {
	mu   sync.Mutex
	max  int
	buf  []byte
	more bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.more = true
	}
	return len(p), nil
}

// String returns the kept output, saying when earlier output was dropped
// and when there was none.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case len(t.buf) == 0:
		return "(no output)"
	case t.more:
		return "..." + string(t.buf)
	}
	return string(t.buf)
}
