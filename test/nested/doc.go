// Package nested holds the nested harness's proof tests: a payload that uses
// /dev/kvm in L1 (or directly, on hosts with hardware KVM), and the guest
// kernel build. The harness itself is internal/nested.
package nested
