package conf

import "testing"

func TestParseBool(t *testing.T) {
	tests := []struct {
		in      string
		want    bool
		wantErr bool
	}{
		{"1", true, false}, {"true", true, false}, {"ON", true, false}, {" yes ", true, false},
		{"0", false, false}, {"False", false, false}, {"off", false, false}, {"no", false, false},
		{"", false, true}, {"2", false, true}, {"enabled", false, true}, {"t", false, true},
	}
	for _, tt := range tests {
		got, err := ParseBool(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseBool(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseBool(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestEnvBool(t *testing.T) {
	t.Setenv("THAW_TEST_BOOL", "")
	if got, err := EnvBool("THAW_TEST_BOOL", true); err != nil || !got {
		t.Errorf("empty: got %v, %v; want true, nil", got, err)
	}
	t.Setenv("THAW_TEST_BOOL", "off")
	if got, err := EnvBool("THAW_TEST_BOOL", true); err != nil || got {
		t.Errorf("off: got %v, %v; want false, nil", got, err)
	}
	t.Setenv("THAW_TEST_BOOL", "maybe")
	if _, err := EnvBool("THAW_TEST_BOOL", true); err == nil {
		t.Error("maybe: got nil error, want one")
	}
}
