// Package nested holds the nested harness's end-to-end proof: a payload that
// uses /dev/kvm with our own KVM code in L1 (or directly, on hosts with
// hardware KVM). The harness and its own tests are internal/nested.
package nested
