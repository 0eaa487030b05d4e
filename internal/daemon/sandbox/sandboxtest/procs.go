package sandboxtest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/thawvm/thaw/internal/daemon/proc"
)

// ProcessesUnder lists live (not zombie) processes, other than this one,
// whose command line or working directory mentions dir: shims and VMMs run
// in their sandbox directories, so a test can check that none is left.
func ProcessesUnder(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if st, err := proc.ReadStat(pid); err != nil || st.State == 'Z' {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if strings.Contains(string(cmdline), dir) || cwd == dir || strings.HasPrefix(cwd, dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}
