package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	base := []string{"-agent", "/a", "-size", "64M", "-o", "/out"}
	tests := []struct {
		args []string
		want string // error substring, "" for none
	}{
		{append(base, "-tar", "/t.tar"), ""},
		{append(base, "-oci", "/oci", "-ref", "x"), ""},
		{append(base, "-docker-archive", "/d.tar"), ""},
		{base, "exactly one of"},
		{append(base, "-tar", "/t", "-dir", "/d"), "exactly one of"},
		{append(base, "-tar", "/t", "-ref", "x"), "-ref applies only"},
		{[]string{"-agent", "/a", "-o", "/out", "-tar", "/t"}, "-size is required"},
		{[]string{"-agent", "/a", "-size", "1X", "-o", "/out", "-tar", "/t"}, "want a positive size"},
		{[]string{"-agent", "/a", "-size", "4M", "-o", "/out", "-tar", "/t"}, "below the minimum"},
		{[]string{"-size", "64M", "-o", "/out", "-tar", "/t"}, "no agent path"},
		{[]string{"-agent", "/a", "-size", "64M", "-tar", "/t"}, "-o is required"},
	}
	for _, tt := range tests {
		o, err := parseFlags(tt.args, &bytes.Buffer{})
		if tt.want == "" {
			if err != nil {
				t.Errorf("%q: got %v", tt.args, err)
			} else if o.cfg.DiskSize != 64<<20 {
				t.Errorf("%q: disk size %d, want 64 MiB", tt.args, o.cfg.DiskSize)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{{"1G", 1 << 30}, {"512M", 512 << 20}, {"4096", 4096}, {"2k", 2048}, {"0", -1}, {"M", -1}, {"-1G", -1}, {"99999999999T", -1}}
	for _, tt := range tests {
		got, err := parseSize("-size", tt.in)
		if (tt.want < 0) != (err != nil) || (err == nil && got != tt.want) {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}
