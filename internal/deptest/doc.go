// Package deptest holds no code: its test enforces the import rules of
// docs/ARCHITECTURE.md and that every package in the module has a doc
// comment, by reading `go list -deps` output for the whole module.
package deptest
