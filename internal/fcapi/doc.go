// Package fcapi holds the wire types of the subset of Firecracker's HTTP API
// that Thaw uses, their validation, a strict decoder that rejects what
// Firecracker rejects (unknown or duplicate fields, missing required fields),
// the parser of Firecracker's --config-file JSON, and a Go client.
//
// Field names, types, required fields and enum spellings follow Firecracker's
// swagger file (src/firecracker/swagger/firecracker.yaml); api/firecracker.yaml
// in this repository describes the same subset in our words. Both thaw-vmm (the
// server side, internal/vmm/api) and thawd (the client side) import this
// package, so it imports neither.
//
// Fields of Firecracker's API that Thaw does not implement (rate limiters,
// vhost-user drives, CPU templates, clock_realtime, ...) are not modelled:
// decoding a body that carries one fails with an error naming the field.
package fcapi
