package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/thawvm/thaw/internal/agentapi"
)

// account is a user resolved from the guest's /etc/passwd and /etc/group.
type account struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32 // supplementary groups from /etc/group
	home   string
	shell  string
}

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
	shell    string
}

// groupEntry is one line of /etc/group.
type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// maxAccountFile caps how much of /etc/passwd or /etc/group is read.
const maxAccountFile = 4 << 20

// parsePasswd parses passwd(5) lines, skipping comments, blank lines and
// lines it cannot parse (as getpwnam does), so one bad line does not lock
// everyone out.
func parsePasswd(data []byte) []passwdEntry {
	var out []passwdEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 64<<10)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 7 || f[0] == "" {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, passwdEntry{name: f[0], uid: uint32(uid), gid: uint32(gid), home: f[5], shell: f[6]})
	}
	return out
}

// parseGroup parses group(5) lines the same way.
func parseGroup(data []byte) []groupEntry {
	var out []groupEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 64<<10)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 4 || f[0] == "" {
			continue
		}
		gid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		var members []string
		for _, m := range strings.Split(f[3], ",") {
			if m != "" {
				members = append(members, m)
			}
		}
		out = append(out, groupEntry{name: f[0], gid: uint32(gid), members: members})
	}
	return out
}

func readAccountFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxAccountFile)); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// lookupUser resolves spec: "name", "uid", "name:group", "uid:gid" (and
// mixtures). A numeric uid not in passwd is allowed (as docker and runc do),
// with home "/" and the gid it gives or the uid as gid.
func lookupUser(etcDir, spec string) (account, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" || (hasGroup && groupPart == "") {
		return account{}, agentapi.Errorf(agentapi.KindInvalid, "user %q: want name, uid, name:group or uid:gid", spec)
	}
	pwData, err := readAccountFile(filepath.Join(etcDir, "passwd"))
	if err != nil && !os.IsNotExist(err) {
		return account{}, fmt.Errorf("reading passwd: %w", err)
	}
	grData, err := readAccountFile(filepath.Join(etcDir, "group"))
	if err != nil && !os.IsNotExist(err) {
		return account{}, fmt.Errorf("reading group: %w", err)
	}
	users, groups := parsePasswd(pwData), parseGroup(grData)

	var a account
	found := false
	num, numErr := strconv.ParseUint(userPart, 10, 32)
	for _, u := range users {
		if (numErr == nil && u.uid == uint32(num)) || (numErr != nil && u.name == userPart) {
			a = account{name: u.name, uid: u.uid, gid: u.gid, home: u.home, shell: u.shell}
			found = true
			break
		}
	}
	if !found {
		if numErr != nil {
			return account{}, agentapi.Errorf(agentapi.KindNotFound, "user %q is not in %s", userPart, filepath.Join(etcDir, "passwd"))
		}
		a = account{uid: uint32(num), gid: uint32(num), home: "/"}
	}
	if hasGroup {
		g, err := lookupGroup(groups, groupPart)
		if err != nil {
			return account{}, fmt.Errorf("user %q: %w", spec, err)
		}
		a.gid = g
	}
	if a.name != "" {
		for _, g := range groups {
			for _, m := range g.members {
				if m == a.name && g.gid != a.gid {
					a.groups = append(a.groups, g.gid)
				}
			}
		}
	}
	if a.home == "" {
		a.home = "/"
	}
	return a, nil
}

func lookupGroup(groups []groupEntry, spec string) (uint32, error) {
	if n, err := strconv.ParseUint(spec, 10, 32); err == nil {
		return uint32(n), nil
	}
	for _, g := range groups {
		if g.name == spec {
			return g.gid, nil
		}
	}
	return 0, agentapi.Errorf(agentapi.KindNotFound, "group %q is not in group file", spec)
}
