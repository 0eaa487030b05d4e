package conf

import (
	"strings"
	"testing"
)

func TestParseByteRate(t *testing.T) {
	tests := []struct {
		in      string
		want    ByteRate
		wantErr bool
	}{
		{"0", 0, false}, {"unlimited", 0, false}, {" unlimited ", 0, false}, {"0MiB/s", 0, false},
		{"209715200", 200 << 20, false}, {"200MiB/s", 200 << 20, false}, {"4096B/s", 4096, false},
		{"8KiB/s", 8 << 10, false}, {"2GiB/s", 2 << 30, false},
		{"50MB/s", 50e6, false}, {"3kB/s", 3000, false}, {"3KB/s", 3000, false}, {"1GB/s", 1e9, false},
		{"18446744073709551615", 1<<64 - 1, false},
		{"", 0, true}, {"-1", 0, true}, {"+5", 0, true}, {"1.5MiB/s", 0, true}, {"200MiB", 0, true},
		{"200 MiB/s", 0, true}, {"200mib/s", 0, true}, {"200Mb/s", 0, true}, {"MiB/s", 0, true},
		{"/s", 0, true}, {"200/s", 0, true}, {"200MiB/sec", 0, true}, {"Unlimited", 0, true}, {"none", 0, true},
		{"18446744073709551616", 0, true}, {"17179869184GiB/s", 0, true}, {"0x10", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseByteRate(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseByteRate(%q): got error %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseByteRate(%q): got %d, want %d", tt.in, got, tt.want)
		}
		if err != nil && !strings.Contains(err.Error(), tt.in) {
			t.Errorf("ParseByteRate(%q): error %q does not name the value", tt.in, err)
		}
	}
}

func TestByteRateString(t *testing.T) {
	tests := []struct {
		in   ByteRate
		want string
	}{
		{0, "unlimited"}, {200 << 20, "200MiB/s"}, {1 << 30, "1GiB/s"}, {1536, "1536B/s"},
		{4 << 10, "4KiB/s"}, {1000, "1000B/s"}, {50e6, "50000000B/s"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("ByteRate(%d).String(): got %q, want %q", uint64(tt.in), got, tt.want)
		}
	}
}

// FuzzParseByteRate checks that whatever ParseByteRate accepts, String
// formats so that it parses back to the same rate.
func FuzzParseByteRate(f *testing.F) {
	for _, s := range []string{"0", "unlimited", "200MiB/s", "50MB/s", "4096", "1.5MiB/s", "18446744073709551615"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseByteRate(s)
		if err != nil {
			return
		}
		back, err := ParseByteRate(r.String())
		if err != nil || back != r {
			t.Fatalf("ParseByteRate(%q) = %d, String %q parses back to %d, %v", s, uint64(r), r.String(), uint64(back), err)
		}
	})
}
