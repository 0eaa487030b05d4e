package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const testPasswd = `root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken line
bad:x:notanumber:1::/:/bin/sh
user:x:1000:1000:User,,,:/home/user:/bin/bash

short:x:5:5
`

const testGroup = `root:x:0:
daemon:x:1:
user:x:1000:
docker:x:998:user,other
audio:x:29:other
wheel:x:10:user
`

func TestLookupUser(t *testing.T) {
	etc := t.TempDir()
	os.WriteFile(filepath.Join(etc, "passwd"), []byte(testPasswd), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte(testGroup), 0o644)
	tests := []struct {
		spec string
		want account
		err  string
	}{
		{"root", account{name: "root", uid: 0, gid: 0, home: "/root", shell: "/bin/bash"}, ""},
		{"user", account{name: "user", uid: 1000, gid: 1000, groups: []uint32{998, 10}, home: "/home/user", shell: "/bin/bash"}, ""},
		{"1000", account{name: "user", uid: 1000, gid: 1000, groups: []uint32{998, 10}, home: "/home/user", shell: "/bin/bash"}, ""},
		{"user:docker", account{name: "user", uid: 1000, gid: 998, groups: []uint32{10}, home: "/home/user", shell: "/bin/bash"}, ""},
		{"1000:29", account{name: "user", uid: 1000, gid: 29, groups: []uint32{998, 10}, home: "/home/user", shell: "/bin/bash"}, ""},
		{"4242", account{uid: 4242, gid: 4242, home: "/"}, ""},
		{"4242:7", account{uid: 4242, gid: 7, home: "/"}, ""},
		{"nobody-here", account{}, `user "nobody-here" is not in`},
		{"bad", account{}, `user "bad" is not in`}, // its line does not parse
		{"short", account{}, `user "short" is not in`},
		{"user:nogroup", account{}, `group "nogroup" is not in`},
		{"", account{}, "want name, uid"},
		{"user:", account{}, "want name, uid"},
	}
	for _, tt := range tests {
		got, err := lookupUser(etc, tt.spec)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("lookupUser(%q): got %+v, %v; want error containing %q", tt.spec, got, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("lookupUser(%q): got %+v, %v; want %+v", tt.spec, got, err, tt.want)
		}
	}
}

func TestLookupUserNoFiles(t *testing.T) {
	// A minimal image without /etc/passwd still runs numeric users.
	got, err := lookupUser(t.TempDir(), "0")
	if err != nil || got.uid != 0 || got.home != "/" {
		t.Errorf("lookupUser(0) without passwd: got %+v, %v", got, err)
	}
	if _, err := lookupUser(t.TempDir(), "root"); err == nil {
		t.Error("lookupUser(root) without passwd succeeded")
	}
}

// FuzzParseAccounts: /etc/passwd and /etc/group belong to the sandbox's
// user, so their parsers take arbitrary bytes.
func FuzzParseAccounts(f *testing.F) {
	f.Add([]byte(testPasswd))
	f.Add([]byte(testGroup))
	f.Add([]byte("a:b:c:d:e:f:g\n::::::\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, u := range parsePasswd(data) {
			if u.name == "" || strings.ContainsAny(u.name, ":\n") {
				t.Fatalf("parsed user name %q", u.name)
			}
		}
		for _, g := range parseGroup(data) {
			if g.name == "" {
				t.Fatal("parsed an empty group name")
			}
			for _, m := range g.members {
				if m == "" || strings.Contains(m, ",") {
					t.Fatalf("parsed member %q", m)
				}
			}
		}
	})
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"PATH=/bin", "HOME=/"}, []string{"A=1", "HOME=/root"}, []string{"A=2", "B="})
	want := []string{"PATH=/bin", "HOME=/root", "A=2", "B="}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want int
		err  bool
	}{
		{"9", 9, false}, {"KILL", 9, false}, {"sigterm", 15, false}, {" SIGUSR1 ", 10, false},
		{"0", 0, true}, {"65", 0, true}, {"NOPE", 0, true}, {"", 0, true},
	}
	for _, tt := range tests {
		got, err := parseSignal(tt.in)
		if (err != nil) != tt.err || int(got) != tt.want {
			t.Errorf("parseSignal(%q): got %d, %v; want %d (error %v)", tt.in, got, err, tt.want, tt.err)
		}
	}
}
