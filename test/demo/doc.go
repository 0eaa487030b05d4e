// Package demo runs the README's main job as a test: the payload that
// `scripts/demo` runs (guest/demo/run: thawd, the Debian template, a
// sandbox created by lazy restore, python3 in it), through nested.Test, so
// it runs directly where Linux guests run and in the nested harness
// elsewhere. The package has only tests.
package demo
