package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/thawvm/thaw/internal/errdefs"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

// openTest opens a fresh store in a temporary directory. Cleanup runs
// Check (every invariant must hold when a test ends) and then closes it.
func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "thawd.db"), Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	t.Cleanup(func() { mustCheck(t, s) }) // runs before Close
	return s
}

func mustCheck(t *testing.T, s *Store) {
	t.Helper()
	if err := s.Check(); err != nil {
		t.Errorf("store invariants violated:\n%v", err)
	}
}

func readyBuild(id string) Build {
	return Build{
		ID:    id,
		State: BuildReady,
		Dir:   "/var/lib/thaw/templates/py/" + id,
		Artifacts: Artifacts{
			Kernel: "vmlinux", Memory: "mem", VMState: "vmstate", Rootfs: "rootfs.ext4", AccessLog: "access.log",
		},
		VCPUs: 2, MemoryMiB: 256, DiskMiB: 1024,
		MemoryBytes: 256 << 20, RootfsBytes: 1 << 30, AccessLogPages: 5000,
		Timings:   []Phase{{"boot", 900 * time.Millisecond}, {"snapshot", 300 * time.Millisecond}},
		CreatedAt: t0, FinishedAt: t0.Add(time.Minute),
	}
}

func newTemplate(name string, builds ...Build) Template {
	t := Template{Name: name, Spec: json.RawMessage(`{"image":"python:3.12"}`), Builds: builds, CreatedAt: t0}
	for _, b := range builds {
		if b.State == BuildReady {
			t.Current = b.ID
		}
	}
	return t
}

func newSandbox(id, tmpl, build string) Sandbox {
	return Sandbox{
		ID: id, Template: tmpl, Build: build, State: Creating,
		Dir: "/var/lib/thaw/sandboxes/" + id, UFFD: true, CreatedAt: t0, UpdatedAt: t0,
	}
}

var liveShim = Shim{PID: 4242, StartTime: 123456, ControlSocket: "/run/thaw/shim/sb.sock"}

// seed stores template "py" with ready build "b1" and sandbox "sb1" (creating).
func seed(t *testing.T, s *Store) {
	t.Helper()
	if err := s.CreateTemplate(newTemplate("py", readyBuild("b1"))); err != nil {
		t.Fatalf("CreateTemplate: %v", err)
	}
	if err := s.CreateSandbox(newSandbox("sb1", "py", "b1")); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	s := openTest(t)
	b := readyBuild("b1")
	b.Warmup = [][]string{{"python3", "-c", "pass"}}
	tmpl := newTemplate("py", b)
	if err := s.CreateTemplate(tmpl); err != nil {
		t.Fatal(err)
	}
	sb := newSandbox("sb1", "py", "b1")
	sb.TTL, sb.ExpiresAt = time.Hour, t0.Add(time.Hour)
	sb.Create = []Phase{{"slot", time.Microsecond}, {"load", 3 * time.Millisecond}}
	if err := s.CreateSandbox(sb); err != nil {
		t.Fatal(err)
	}
	gotT, err := s.Template("py")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotT, tmpl) {
		t.Errorf("Template = %+v, want %+v", gotT, tmpl)
	}
	gotS, err := s.Sandbox("sb1")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotS, sb) {
		t.Errorf("Sandbox = %+v, want %+v", gotS, sb)
	}
	all, err := s.Sandboxes()
	if err != nil || len(all) != 1 {
		t.Errorf("Sandboxes = %d records, %v; want 1, nil", len(all), err)
	}
	ts, err := s.Templates()
	if err != nil || len(ts) != 1 {
		t.Errorf("Templates = %d records, %v; want 1, nil", len(ts), err)
	}
}

func TestPersistsAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "thawd.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	seed(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatalf("reopening: %v", err)
	}
	defer s.Close()
	if _, err := s.Sandbox("sb1"); err != nil {
		t.Errorf("after reopen: %v", err)
	}
	mustCheck(t, s)
}

func TestRefusesEphemeralAndBadIDs(t *testing.T) {
	tests := []struct {
		name string
		do   func(s *Store) error
	}{
		{"sandbox id build-", func(s *Store) error { return s.CreateSandbox(newSandbox("build-1", "py", "b1")) }},
		{"template build-", func(s *Store) error { return s.CreateTemplate(newTemplate("build-py")) }},
		{"build id build-", func(s *Store) error { return s.CreateTemplate(newTemplate("go", readyBuild("build-7"))) }},
		{"added build build-", func(s *Store) error {
			_, err := s.UpdateTemplate("py", func(tp *Template) error {
				tp.Builds = append(tp.Builds, readyBuild("build-2"))
				return nil
			})
			return err
		}},
		{"slash in id", func(s *Store) error { return s.CreateSandbox(newSandbox("a/b", "py", "b1")) }},
		{"dot-dot", func(s *Store) error { return s.CreateTemplate(newTemplate("..")) }},
		{"empty", func(s *Store) error { return s.CreateSandbox(newSandbox("", "py", "b1")) }},
		{"too long", func(s *Store) error { return s.CreateSandbox(newSandbox(strings.Repeat("a", 65), "py", "b1")) }},
		{"artifact escapes dir", func(s *Store) error {
			b := readyBuild("b9")
			b.Artifacts.Memory = "../../etc/passwd"
			return s.CreateTemplate(newTemplate("evil", b))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTest(t)
			seed(t, s)
			before := dump(t, s)
			err := tt.do(s)
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("got error %v, want an invalid-argument error", err)
			}
			if after := dump(t, s); after != before {
				t.Errorf("store changed by a refused write:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// dump renders every key and value, to prove refused writes change nothing.
func dump(t *testing.T, s *Store) string {
	t.Helper()
	var b strings.Builder
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			return bk.ForEach(func(k, v []byte) error {
				fmt.Fprintf(&b, "%s/%s=%s\n", name, k, v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestSandboxStateMachine(t *testing.T) {
	type step struct {
		to     SandboxState
		shim   Shim
		reason string
		ok     bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"create, run, pause, resume, stop", []step{
			{Running, liveShim, "", true}, {Pausing, liveShim, "", true}, {Paused, Shim{}, "", true},
			{Resuming, liveShim, "", true}, {Running, liveShim, "", true}, {Stopping, liveShim, "", true},
		}},
		{"creating cannot pause", []step{{Paused, Shim{}, "", false}}},
		{"paused cannot run without resuming", []step{
			{Running, liveShim, "", true}, {Pausing, liveShim, "", true}, {Paused, Shim{}, "", true}, {Running, liveShim, "", false},
		}},
		{"failed only stops", []step{
			{Failed, Shim{}, "shim gone", true}, {Running, liveShim, "", false}, {Stopping, Shim{}, "", true},
		}},
		{"stopping does not come back", []step{{Stopping, Shim{}, "", true}, {Running, liveShim, "", false}}},
		{"running needs a shim", []step{{Running, Shim{}, "", false}}},
		{"paused has no shim", []step{
			{Running, liveShim, "", true}, {Pausing, liveShim, "", true}, {Paused, liveShim, "", false},
		}},
		{"failed needs a reason", []step{{Failed, Shim{}, "", false}}},
		{"reason only when failed", []step{{Running, liveShim, "oops", false}}},
		{"unknown state", []step{{SandboxState("zombie"), liveShim, "", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTest(t)
			seed(t, s)
			for i, st := range tt.steps {
				before, _ := s.Sandbox("sb1")
				_, err := s.UpdateSandbox("sb1", func(sb *Sandbox) error {
					sb.State, sb.Shim, sb.Reason = st.to, st.shim, st.reason
					return nil
				})
				if st.ok && err != nil {
					t.Fatalf("step %d (%s -> %s): got %v, want success", i, before.State, st.to, err)
				}
				if !st.ok {
					if err == nil {
						t.Fatalf("step %d (%s -> %s): got success, want refusal", i, before.State, st.to)
					}
					if !errdefs.IsFailedPrecondition(err) && !errdefs.IsInvalidArgument(err) {
						t.Errorf("step %d: got %v, want a failed-precondition or invalid-argument error", i, err)
					}
					after, _ := s.Sandbox("sb1")
					if !reflect.DeepEqual(after, before) {
						t.Errorf("step %d: refused update changed the record: %+v -> %+v", i, before, after)
					}
				}
			}
		})
	}
}

func TestCreateSandboxChecksTemplate(t *testing.T) {
	s := openTest(t)
	building := readyBuild("b2")
	building.State = Building
	if err := s.CreateTemplate(newTemplate("py", readyBuild("b1"), building)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		sb   Sandbox
		is   func(error) bool
		kind string
	}{
		{"unknown template", newSandbox("a", "nope", "b1"), errdefs.IsNotFound, "not found"},
		{"unknown build", newSandbox("a", "py", "b9"), errdefs.IsNotFound, "not found"},
		{"build not ready", newSandbox("a", "py", "b2"), errdefs.IsFailedPrecondition, "failed precondition"},
		{"not creating", func() Sandbox { sb := newSandbox("a", "py", "b1"); sb.State, sb.Shim = Running, liveShim; return sb }(), errdefs.IsInvalidArgument, "invalid argument"},
	}
	for _, tt := range tests {
		if err := s.CreateSandbox(tt.sb); !tt.is(err) {
			t.Errorf("%s: got %v, want a %s error", tt.name, err, tt.kind)
		}
	}
	if err := s.CreateSandbox(newSandbox("a", "py", "b1")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSandbox(newSandbox("a", "py", "b1")); !errdefs.IsAlreadyExists(err) {
		t.Errorf("duplicate: got %v, want an already-exists error", err)
	}
	if err := s.CreateTemplate(newTemplate("py")); !errdefs.IsAlreadyExists(err) {
		t.Errorf("duplicate template: got %v, want an already-exists error", err)
	}
	if _, err := s.Sandbox("zz"); !errdefs.IsNotFound(err) {
		t.Errorf("Sandbox(zz): got %v, want not found", err)
	}
}

func TestBuildInUseIsProtected(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	if err := s.CreateTemplate(newTemplate("go", readyBuild("g1"))); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSandbox(newSandbox("sb2", "go", "g1")); err != nil {
		t.Fatal(err)
	}
	if users, err := s.SandboxesUsing("py"); err != nil || len(users) != 1 || users[0].ID != "sb1" {
		t.Errorf("SandboxesUsing(py) = %+v, %v; want [sb1]", users, err)
	}
	if _, err := s.DeleteTemplate("py"); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "sb1") {
		t.Errorf("DeleteTemplate while used: got %v, want a failed-precondition error naming sb1", err)
	}
	_, err := s.UpdateTemplate("py", func(tp *Template) error {
		tp.Builds, tp.Current = nil, ""
		return nil
	})
	if !errdefs.IsFailedPrecondition(err) {
		t.Errorf("removing a used build: got %v, want a failed-precondition error", err)
	}
	_, err = s.UpdateTemplate("py", func(tp *Template) error {
		tp.Builds[0].State, tp.Builds[0].Reason, tp.Current = BuildFailed, "x", ""
		return nil
	})
	if !errdefs.IsFailedPrecondition(err) {
		t.Errorf("ready -> failed: got %v, want a failed-precondition error", err)
	}
	// Stop and delete the sandbox; now the template can go.
	if _, err := s.UpdateSandbox("sb1", func(sb *Sandbox) error { sb.State = Stopping; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSandbox("sb1"); err != nil {
		t.Fatal(err)
	}
	if deleted, err := s.DeleteTemplate("py"); err != nil || len(deleted.Builds) != 1 {
		t.Errorf("DeleteTemplate after its sandbox went: %+v, %v; want the deleted record", deleted, err)
	}
	if _, err := s.DeleteTemplate("py"); !errdefs.IsNotFound(err) {
		t.Errorf("second DeleteTemplate: got %v, want not found", err)
	}
}

func TestBuildLifecycle(t *testing.T) {
	s := openTest(t)
	if err := s.CreateTemplate(newTemplate("py")); err != nil {
		t.Fatal(err)
	}
	b := readyBuild("b1")
	b.State, b.Artifacts = Building, Artifacts{}
	if _, err := s.UpdateTemplate("py", func(tp *Template) error { tp.Builds = append(tp.Builds, b); return nil }); err != nil {
		t.Fatalf("adding a building build: %v", err)
	}
	if _, err := s.UpdateTemplate("py", func(tp *Template) error { tp.Current = "b1"; return nil }); !errdefs.IsInvalidArgument(err) {
		t.Errorf("current = a building build: got %v, want invalid argument", err)
	}
	got, err := s.UpdateTemplate("py", func(tp *Template) error {
		tp.Builds[0].State, tp.Builds[0].Artifacts, tp.Current = BuildReady, readyBuild("b1").Artifacts, "b1"
		return nil
	})
	if err != nil {
		t.Fatalf("building -> ready: %v", err)
	}
	if got.Current != "b1" {
		t.Errorf("Current = %q, want b1", got.Current)
	}
	if _, err := s.UpdateTemplate("py", func(tp *Template) error { tp.Name = "go"; return nil }); !errdefs.IsInvalidArgument(err) {
		t.Errorf("renaming: got %v, want invalid argument", err)
	}
	boom := errors.New("boom")
	if _, err := s.UpdateTemplate("py", func(tp *Template) error { tp.Builds = nil; return boom }); !errors.Is(err, boom) {
		t.Errorf("fn error: got %v, want boom", err)
	}
	if tp, _ := s.Template("py"); len(tp.Builds) != 1 {
		t.Errorf("after a failed update: %d builds, want 1 (nothing may change)", len(tp.Builds))
	}
}

func TestDeleteSandboxOnlyWhenStoppedOrFailed(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	if _, err := s.UpdateSandbox("sb1", func(sb *Sandbox) error { sb.State, sb.Shim = Running, liveShim; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSandbox("sb1"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("deleting a running sandbox: got %v, want failed precondition", err)
	}
	if _, err := s.UpdateSandbox("sb1", func(sb *Sandbox) error { sb.State, sb.Reason = Failed, "shim exited"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSandbox("sb1"); err != nil {
		t.Errorf("deleting a failed sandbox: %v", err)
	}
	if err := s.DeleteSandbox("sb1"); !errdefs.IsNotFound(err) {
		t.Errorf("second delete: got %v, want not found", err)
	}
}

// TestUpdateIsAtomic: concurrent read-modify-write updates lose nothing.
func TestUpdateIsAtomic(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	const workers, each = 8, 25
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				_, err := s.UpdateSandbox("sb1", func(sb *Sandbox) error {
					sb.Create = append(sb.Create, Phase{fmt.Sprintf("w%d-%d", w, i), time.Duration(i)})
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	sb, err := s.Sandbox("sb1")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(sb.Create), workers*each; got != want {
		t.Errorf("got %d phases after concurrent appends, want %d (an update was lost)", got, want)
	}
}

func setSchema(t *testing.T, path string, v uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, binary.BigEndian.AppendUint64(nil, v))
	}); err != nil {
		t.Fatal(err)
	}
}

func schemaOf(t *testing.T, path string) uint64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v uint64
	db.View(func(tx *bolt.Tx) error {
		v = binary.BigEndian.Uint64(tx.Bucket(bucketMeta).Get(keySchema))
		return nil
	})
	return v
}

func newStoreFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "thawd.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	seed(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestNewerSchemaRefused(t *testing.T) {
	path := newStoreFile(t)
	setSchema(t, path, SchemaVersion+1)
	_, err := Open(path, Options{})
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("got %v, want a failed-precondition error", err)
	}
	if want := fmt.Sprintf("schema version %d", SchemaVersion+1); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %q", err, want)
	}
	if got := schemaOf(t, path); got != SchemaVersion+1 {
		t.Errorf("refusal changed the schema version to %d", got)
	}
}

func TestMigration(t *testing.T) {
	markSpecs := func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTemplates)
		return b.ForEach(func(k, v []byte) error {
			var tp Template
			if err := json.Unmarshal(v, &tp); err != nil {
				return err
			}
			tp.Spec = json.RawMessage(`{"migrated":true}`)
			data, err := json.Marshal(&tp)
			if err != nil {
				return err
			}
			return b.Put(k, data)
		})
	}
	boom := errors.New("boom")
	tests := []struct {
		name       string
		sch        schema
		wantErr    string
		wantSchema uint64
		wantSpec   string
	}{
		{"applies", schema{2, map[uint64]Migration{1: markSpecs}}, "", 2, `{"migrated":true}`},
		{"failure rolls back", schema{2, map[uint64]Migration{1: func(tx *bolt.Tx) error {
			if err := markSpecs(tx); err != nil {
				return err
			}
			return boom
		}}}, "migrating schema 1 to 2: boom", 1, `{"image":"python:3.12"}`},
		{"gap", schema{3, map[uint64]Migration{1: markSpecs}}, "no migration from schema version 2 to 3", 1, `{"image":"python:3.12"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := newStoreFile(t)
			s, err := open(path, Options{}, tt.sch)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("open: %v", err)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("open: got %v, want error containing %q", err, tt.wantErr)
				}
			} else {
				s.Close()
			}
			if got := schemaOf(t, path); got != tt.wantSchema {
				t.Errorf("schema version = %d, want %d", got, tt.wantSchema)
			}
			db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.View(func(tx *bolt.Tx) error {
				var tp Template
				json.Unmarshal(tx.Bucket(bucketTemplates).Get([]byte("py")), &tp)
				if string(tp.Spec) != tt.wantSpec {
					t.Errorf("spec = %s, want %s", tp.Spec, tt.wantSpec)
				}
				return nil
			})
		})
	}
}

func TestNotAThawStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("widgets")); return err })
	db.Close()
	if _, err := Open(path, Options{}); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "not a thaw store") {
		t.Errorf("got %v, want a failed-precondition error saying it is not a thaw store", err)
	}
}

func TestSecondOpenIsUnavailable(t *testing.T) {
	s := openTest(t)
	_, err := Open(s.Path(), Options{LockTimeout: 50 * time.Millisecond})
	if !errdefs.IsUnavailable(err) {
		t.Errorf("second Open: got %v, want an unavailable error", err)
	}
}

// putRaw writes value under bucket/key, bypassing every check.
func putRaw(t *testing.T, s *Store, bucket []byte, key string, value []byte) {
	t.Helper()
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), value) }); err != nil {
		t.Fatal(err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCorruptRecordIsAClearError(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	putRaw(t, s, bucketSandboxes, "sb2", []byte("{\"id\":\"sb2\",\x00garbage"))
	_, err := s.Sandbox("sb2")
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `"sb2"`) {
		t.Errorf("Sandbox(sb2): got %v, want ErrCorrupt naming the key", err)
	}
	if errdefs.KindOf(err) != nil {
		t.Errorf("a corrupt record has kind %v, want none (it is an internal error)", errdefs.KindOf(err))
	}
	if _, err := s.Sandboxes(); !strings.Contains(fmt.Sprint(err), `"sb2"`) {
		t.Errorf("Sandboxes: got %v, want an error naming sb2", err)
	}
	if err := s.Check(); err == nil || !strings.Contains(err.Error(), `"sb2"`) {
		t.Errorf("Check: got %v, want a violation naming sb2", err)
	}
	s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketSandboxes).Delete([]byte("sb2")) })
}

func TestCheckFindsViolations(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	orphan := newSandbox("orphan", "gone", "b1")
	ghostBuild := newSandbox("ghost", "py", "b7")
	ephemeral := newSandbox("build-x", "py", "b1")
	ephemeral.ID = "build-x"
	renamed := newSandbox("other", "py", "b1")
	putRaw(t, s, bucketSandboxes, "orphan", mustJSON(t, orphan))
	putRaw(t, s, bucketSandboxes, "ghost", mustJSON(t, ghostBuild))
	putRaw(t, s, bucketSandboxes, "build-x", mustJSON(t, ephemeral))
	putRaw(t, s, bucketSandboxes, "mismatch", mustJSON(t, renamed))
	s.db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("junk")); return err })
	err := s.Check()
	if err == nil {
		t.Fatal("Check passed a store with five violations")
	}
	for _, want := range []string{
		`sandbox "orphan": template "gone" does not exist`,
		`sandbox "ghost": template "py" has no build "b7"`,
		`sandbox record "build-x"`,
		`sandbox record "mismatch": corrupt record: it holds id "other"`,
		`unexpected bucket "junk"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Check error lacks %q:\n%v", want, err)
		}
	}
	// Repair, so that the cleanup check passes.
	s.db.Update(func(tx *bolt.Tx) error {
		for _, k := range []string{"orphan", "ghost", "build-x", "mismatch"} {
			tx.Bucket(bucketSandboxes).Delete([]byte(k))
		}
		return tx.DeleteBucket([]byte("junk"))
	})
}

// TestOpenDamagedFile: a file that is not a bbolt database, or one cut
// short, is an error naming the path, not a panic.
func TestOpenDamagedFile(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("thaw"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	truncated := newStoreFile(t)
	if err := os.Truncate(truncated, 4096); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{garbage, truncated} {
		s, err := Open(path, Options{})
		if err == nil {
			s.Close()
			t.Errorf("Open(%s) succeeded on a damaged file", path)
			continue
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("error %q does not name %s", err, path)
		}
	}
}

func TestStateLists(t *testing.T) {
	if got, want := len(SandboxStates()), len(sandboxTransitions); got != want {
		t.Errorf("SandboxStates has %d states, the transition table %d", got, want)
	}
	for _, st := range SandboxStates() {
		if !st.Valid() {
			t.Errorf("SandboxStates lists invalid %q", st)
		}
	}
	for _, st := range BuildStates() {
		if !st.Valid() {
			t.Errorf("BuildStates lists invalid %q", st)
		}
	}
}

// TestRefusalsInSharedCommits: when concurrent changes share a commit and
// some are refused, the refused ones report their own error and change
// nothing, and every accepted one lands.
func TestRefusalsInSharedCommits(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	const workers, each = 8, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				if _, err := s.UpdateSandbox("sb1", func(sb *Sandbox) error {
					sb.Create = append(sb.Create, Phase{fmt.Sprintf("w%d-%d", w, i), 1})
					return nil
				}); err != nil {
					t.Error(err)
				}
				_, err := s.UpdateSandbox("sb1", func(sb *Sandbox) error {
					sb.State = Paused // creating cannot become paused
					sb.Create = append(sb.Create, Phase{"refused", 1})
					return nil
				})
				if !errdefs.IsFailedPrecondition(err) {
					t.Errorf("invalid transition: got %v, want failed precondition", err)
				}
			}
		})
	}
	wg.Wait()
	sb, err := s.Sandbox("sb1")
	if err != nil {
		t.Fatal(err)
	}
	if len(sb.Create) != workers*each || sb.State != Creating {
		t.Errorf("got %d phases in state %s, want %d in creating", len(sb.Create), sb.State, workers*each)
	}
	for _, p := range sb.Create {
		if p.Name == "refused" {
			t.Fatal("a refused change landed")
		}
	}
}

func TestInterruptedBuilds(t *testing.T) {
	s := openTest(t)
	building := readyBuild("b2")
	building.State, building.Artifacts = Building, Artifacts{}
	if err := s.CreateTemplate(newTemplate("py", readyBuild("b1"), building)); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateTemplate(newTemplate("go", readyBuild("g1"))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteTemplate("py"); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "in progress") {
		t.Errorf("deleting during a build: got %v, want failed precondition", err)
	}
	n, err := s.FailInterruptedBuilds("interrupted by a thawd restart")
	if err != nil || n != 1 {
		t.Fatalf("FailInterruptedBuilds = %d, %v; want 1, nil", n, err)
	}
	tp, _ := s.Template("py")
	if b := tp.BuildByID("b2"); b.State != BuildFailed || b.Reason != "interrupted by a thawd restart" {
		t.Errorf("build b2 = %s %q, want failed with the reason", b.State, b.Reason)
	}
	if b := tp.BuildByID("b1"); b.State != BuildReady {
		t.Errorf("ready build b1 became %s", b.State)
	}
	if n, err := s.FailInterruptedBuilds("again"); err != nil || n != 0 {
		t.Errorf("second call = %d, %v; want 0", n, err)
	}
	if _, err := s.DeleteTemplate("py"); err != nil {
		t.Errorf("deleting after the interrupted build failed: %v", err)
	}
}
