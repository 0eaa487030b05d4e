package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string // error substring; "" for success
	}{
		{[]string{"--api-sock", "/tmp/x.sock", "--id", "vm-1_a"}, ""},
		{[]string{"--no-api", "--config-file", "vm.json", "--no-seccomp"}, ""},
		{[]string{"--no-api"}, "--no-api needs --config-file"},
		{[]string{"--seccomp-filter", "f.bpf"}, "--seccomp-filter is not supported"},
		{[]string{"--boot-timer"}, "--boot-timer is not supported"},
		{[]string{"--id", "a/b"}, "--id"},
		{[]string{"vmlinux"}, "unexpected arguments"},
		{[]string{"--bogus"}, "flag provided but not defined"},
	}
	for _, tt := range tests {
		_, err := parseFlags(tt.args, io.Discard)
		if tt.want == "" {
			if err != nil {
				t.Errorf("parseFlags(%q): %v", tt.args, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseFlags(%q): got %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
}

func TestLogLevel(t *testing.T) {
	for _, s := range []string{"Off", "Error", "Warning", "warn", "Info", "Debug", "Trace"} {
		if _, _, err := logLevel(s); err != nil {
			t.Errorf("logLevel(%q): %v", s, err)
		}
	}
	if _, on, _ := logLevel("Off"); on {
		t.Errorf("logLevel(Off): logging on")
	}
	if _, _, err := logLevel("loud"); err == nil {
		t.Errorf("logLevel(loud): got nil error")
	}
}

func TestVersionAndHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "thaw-vmm v") {
		t.Errorf("--version: code %d, output %q", code, out.String())
	}
	errOut.Reset()
	if code := run([]string{"--help"}, &out, &errOut); code != 0 || !strings.Contains(errOut.String(), "-api-sock") {
		t.Errorf("--help: code %d, usage %q", code, errOut.String())
	}
}
