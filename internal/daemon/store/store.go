// Package store is thawd's state store: template and sandbox records in a
// bbolt file, under a schema version. Every change is one bbolt transaction
// (read, check, modify, write), state changes follow the sandbox and build
// state machines, and Check verifies the invariants that tie records
// together (every sandbox points at an existing, ready template build; no
// ephemeral "build-" id is ever stored).
//
// Layout (schema 1): bucket "meta" holds key "schema" (uint64 big-endian);
// bucket "templates" maps a template name to its JSON record (builds
// included); bucket "sandboxes" maps a sandbox id to its JSON record.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/thawvm/thaw/internal/errdefs"
)

// SchemaVersion is the store layout this package reads and writes.
const SchemaVersion = 1

var (
	bucketMeta      = []byte("meta")
	bucketTemplates = []byte("templates")
	bucketSandboxes = []byte("sandboxes")
	keySchema       = []byte("schema")
)

// Migration rewrites a store from one schema version to the next inside the
// opening transaction; if it fails, nothing is written.
type Migration func(tx *bolt.Tx) error

// schema is the version this code writes and the migrations that reach it:
// migrations[v] takes a store from version v to v+1.
type schema struct {
	version    uint64
	migrations map[uint64]Migration
}

// current is the schema of this build of thawd. No migrations exist yet;
// the first layout change adds migrations[1].
var current = schema{version: SchemaVersion, migrations: map[uint64]Migration{}}

// Options configures Open.
type Options struct {
	// Logger receives the store's few log lines (migrations). Nil means
	// discard.
	Logger *slog.Logger
	// LockTimeout bounds the wait for the file lock another process (a
	// second thawd) holds. Zero means one second.
	LockTimeout time.Duration

	// solo commits every sandbox change in its own transaction instead of
	// batching; only benchmarks set it, to compare.
	solo bool
}

// batchDelay is how long a sandbox change that found others in flight waits
// for more to share its commit. Every commit is an fsync (1 to 10 ms on the
// development VM, docs/benchmarks/daemon.md): sharing lets concurrent
// creates pay for one together instead of queueing for one each.
const batchDelay = time.Millisecond

// Store is an open state store. Its methods are safe for concurrent use.
type Store struct {
	db   *bolt.DB
	path string
	log  *slog.Logger
	solo bool
	// inflight counts sandbox changes under way, to choose between a
	// solo commit and a shared one.
	inflight atomic.Int32
}

// Open opens (creating if needed) the store at path. A store written by a
// newer thawd (a higher schema version) is refused without being changed; an
// older one is migrated in one transaction.
func Open(path string, opts Options) (*Store, error) {
	return open(path, opts, current)
}

func open(path string, opts Options, sch schema) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	timeout := opts.LockTimeout
	if timeout == 0 {
		timeout = time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, errdefs.Unavailable("opening store %s: another process (a second thawd?) holds its lock", path)
	}
	if err != nil {
		return nil, fmt.Errorf("opening store %s: %w", path, err)
	}
	db.MaxBatchDelay = batchDelay
	s := &Store{db: db, path: path, log: log, solo: opts.solo}
	if err := db.Update(func(tx *bolt.Tx) error { return s.prepare(tx, sch) }); err != nil {
		db.Close()
		return nil, fmt.Errorf("opening store %s: %w", path, err)
	}
	return s, nil
}

// prepare creates the buckets of a new store, or checks and migrates the
// schema version of an existing one.
func (s *Store) prepare(tx *bolt.Tx, sch schema) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		var names []string
		if err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			names = append(names, string(name))
			return nil
		}); err != nil {
			return err
		}
		if len(names) > 0 {
			return errdefs.FailedPrecondition("the file has buckets %q but no schema version: it is not a thaw store", names)
		}
		for _, b := range [][]byte{bucketMeta, bucketTemplates, bucketSandboxes} {
			if _, err := tx.CreateBucket(b); err != nil {
				return fmt.Errorf("creating bucket %s: %w", b, err)
			}
		}
		return putSchema(tx, sch.version)
	}
	raw := meta.Get(keySchema)
	if len(raw) != 8 {
		return fmt.Errorf("%w: schema version is %d bytes, want 8", ErrCorrupt, len(raw))
	}
	v := binary.BigEndian.Uint64(raw)
	if v > sch.version {
		return errdefs.FailedPrecondition("store has schema version %d but this thawd understands at most %d: run a newer thawd, or move the store away to start empty", v, sch.version)
	}
	for ; v < sch.version; v++ {
		m := sch.migrations[v]
		if m == nil {
			return fmt.Errorf("no migration from schema version %d to %d", v, v+1)
		}
		s.log.Info("migrating store", "path", s.path, "from", v, "to", v+1)
		if err := m(tx); err != nil {
			return fmt.Errorf("migrating schema %d to %d: %w", v, v+1, err)
		}
	}
	return putSchema(tx, sch.version)
}

func putSchema(tx *bolt.Tx, v uint64) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return fmt.Errorf("%w: bucket %s missing", ErrCorrupt, bucketMeta)
	}
	return meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, v))
}

// Close closes the store's file.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("closing store %s: %w", s.path, err)
	}
	return nil
}

// Path returns the store's file path.
func (s *Store) Path() string { return s.path }

// writeSandbox runs fn in a write transaction. A change that finds no other
// under way commits at once; one that does joins a shared commit (bbolt's
// Batch), so a lone create pays no batching delay while concurrent creates
// share fsyncs. In a shared commit fn may run more than once (bbolt retries
// it alone if another member fails), so it must only read and write the
// transaction.
func (s *Store) writeSandbox(fn func(tx *bolt.Tx) error) error {
	defer s.inflight.Add(-1)
	if s.inflight.Add(1) == 1 || s.solo {
		return s.db.Update(fn)
	}
	return s.db.Batch(fn)
}

func encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding record: %w", err)
	}
	return b, nil
}

// buckets returns the record buckets of tx, or an error if the store lost one.
func buckets(tx *bolt.Tx) (templates, sandboxes *bolt.Bucket, err error) {
	templates, sandboxes = tx.Bucket(bucketTemplates), tx.Bucket(bucketSandboxes)
	if templates == nil || sandboxes == nil {
		return nil, nil, fmt.Errorf("%w: record buckets missing", ErrCorrupt)
	}
	return templates, sandboxes, nil
}

// CreateTemplate stores a new template record. Its builds, if any, must be
// valid; usually a template starts with none and gains them by
// UpdateTemplate.
func (s *Store) CreateTemplate(t Template) error {
	if err := t.Validate(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		tb, _, err := buckets(tx)
		if err != nil {
			return err
		}
		if tb.Get([]byte(t.Name)) != nil {
			return errdefs.AlreadyExists("template %q already exists", t.Name)
		}
		data, err := encode(&t)
		if err != nil {
			return err
		}
		return tb.Put([]byte(t.Name), data)
	})
}

// Template returns the template named name.
func (s *Store) Template(name string) (Template, error) {
	var t Template
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		t, err = getTemplate(tx, name)
		return err
	})
	return t, err
}

func getTemplate(tx *bolt.Tx, name string) (Template, error) {
	tb, _, err := buckets(tx)
	if err != nil {
		return Template{}, err
	}
	data := tb.Get([]byte(name))
	if data == nil {
		return Template{}, errdefs.NotFound("template %q not found", name)
	}
	return decodeTemplate([]byte(name), data)
}

// Templates returns every template, ordered by name.
func (s *Store) Templates() ([]Template, error) {
	var ts []Template
	err := s.db.View(func(tx *bolt.Tx) error {
		tb, _, err := buckets(tx)
		if err != nil {
			return err
		}
		return tb.ForEach(func(k, v []byte) error {
			t, err := decodeTemplate(k, v)
			if err != nil {
				return err
			}
			ts = append(ts, t)
			return nil
		})
	})
	return ts, err
}

// UpdateTemplate reads the template named name, lets fn change it and writes
// it back, all in one transaction; if fn returns an error nothing changes.
// Like UpdateSandbox's, fn must not block. The name cannot change, builds
// follow the build state machine, and a build that sandboxes use can be
// neither removed nor changed in state.
func (s *Store) UpdateTemplate(name string, fn func(*Template) error) (Template, error) {
	var out Template
	err := s.db.Update(func(tx *bolt.Tx) error {
		old, err := getTemplate(tx, name)
		if err != nil {
			return err
		}
		t, err := getTemplate(tx, name) // a second decode: fn gets a copy sharing nothing with old
		if err != nil {
			return err
		}
		if err := fn(&t); err != nil {
			return err
		}
		if t.Name != old.Name {
			return errdefs.InvalidArgument("template %q: the name cannot change (to %q)", old.Name, t.Name)
		}
		if err := t.Validate(); err != nil {
			return err
		}
		used, err := buildsInUse(tx, name)
		if err != nil {
			return err
		}
		for _, ob := range old.Builds {
			nb := t.BuildByID(ob.ID)
			if nb == nil {
				if ids := used[ob.ID]; len(ids) > 0 {
					return errdefs.FailedPrecondition("template %q: build %q is used by sandboxes %q: delete them first", name, ob.ID, ids)
				}
				continue
			}
			if !ob.State.CanMoveTo(nb.State) {
				return errdefs.FailedPrecondition("template %q: build %q cannot go from %s to %s", name, ob.ID, ob.State, nb.State)
			}
		}
		data, err := encode(&t)
		if err != nil {
			return err
		}
		out = t
		return templatesBucket(tx).Put([]byte(name), data)
	})
	return out, err
}

func templatesBucket(tx *bolt.Tx) *bolt.Bucket { return tx.Bucket(bucketTemplates) }

// buildsInUse maps each build id of template name to the sandboxes using it.
func buildsInUse(tx *bolt.Tx, name string) (map[string][]string, error) {
	_, sbb, err := buckets(tx)
	if err != nil {
		return nil, err
	}
	used := map[string][]string{}
	err = sbb.ForEach(func(k, v []byte) error {
		sb, err := decodeSandbox(k, v)
		if err != nil {
			return err
		}
		if sb.Template == name {
			used[sb.Build] = append(used[sb.Build], sb.ID)
		}
		return nil
	})
	return used, err
}

// DeleteTemplate deletes the template named name and all its builds'
// records, returning the record as it was (so the caller can remove its
// build directories). It is refused while any sandbox uses one of its
// builds (forcing is the caller's job: delete those sandboxes first) and
// while a build is in progress.
func (s *Store) DeleteTemplate(name string) (Template, error) {
	var deleted Template
	err := s.db.Update(func(tx *bolt.Tx) error {
		t, err := getTemplate(tx, name)
		if err != nil {
			return err
		}
		deleted = t
		used, err := buildsInUse(tx, name)
		if err != nil {
			return err
		}
		if len(used) > 0 {
			var ids []string
			for _, v := range used {
				ids = append(ids, v...)
			}
			slices.Sort(ids)
			return errdefs.FailedPrecondition("template %q is used by sandboxes %q: delete them first", name, ids)
		}
		for _, b := range t.Builds {
			if b.State == Building {
				return errdefs.FailedPrecondition("template %q: build %q is in progress", name, b.ID)
			}
		}
		return templatesBucket(tx).Delete([]byte(name))
	})
	if err != nil {
		return Template{}, err
	}
	return deleted, nil
}

// FailInterruptedBuilds marks every build still "building" as failed with
// reason and returns how many it marked. Builds run inside thawd, so at
// start any such build was interrupted by the previous thawd's end; left
// alone it would keep its template from ever being deleted.
func (s *Store) FailInterruptedBuilds(reason string) (int, error) {
	if reason == "" {
		return 0, errdefs.InvalidArgument("a failed build needs a reason")
	}
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		n = 0
		tbk, _, err := buckets(tx)
		if err != nil {
			return err
		}
		var changed []Template
		if err := tbk.ForEach(func(k, v []byte) error {
			t, err := decodeTemplate(k, v)
			if err != nil {
				return err
			}
			hit := false
			for i := range t.Builds {
				if t.Builds[i].State == Building {
					t.Builds[i].State, t.Builds[i].Reason = BuildFailed, reason
					hit = true
					n++
				}
			}
			if hit {
				changed = append(changed, t)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, t := range changed {
			data, err := encode(&t)
			if err != nil {
				return err
			}
			if err := tbk.Put([]byte(t.Name), data); err != nil {
				return err
			}
		}
		return nil
	})
	return n, err
}

// CreateSandbox stores a new sandbox record, which must be in state
// Creating and name a ready build of an existing template.
func (s *Store) CreateSandbox(sb Sandbox) error {
	if err := sb.Validate(); err != nil {
		return err
	}
	if sb.State != Creating {
		return errdefs.InvalidArgument("sandbox %q: a new record must be %s, not %s", sb.ID, Creating, sb.State)
	}
	return s.writeSandbox(func(tx *bolt.Tx) error {
		_, sbb, err := buckets(tx)
		if err != nil {
			return err
		}
		if sbb.Get([]byte(sb.ID)) != nil {
			return errdefs.AlreadyExists("sandbox %q already exists", sb.ID)
		}
		t, err := getTemplate(tx, sb.Template)
		if err != nil {
			return err
		}
		b := t.BuildByID(sb.Build)
		if b == nil {
			return errdefs.NotFound("template %q has no build %q", sb.Template, sb.Build)
		}
		if b.State != BuildReady {
			return errdefs.FailedPrecondition("template %q build %q is %s, not ready", sb.Template, sb.Build, b.State)
		}
		data, err := encode(&sb)
		if err != nil {
			return err
		}
		return sbb.Put([]byte(sb.ID), data)
	})
}

// Sandbox returns the sandbox with the given id.
func (s *Store) Sandbox(id string) (Sandbox, error) {
	var sb Sandbox
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		sb, err = getSandbox(tx, id)
		return err
	})
	return sb, err
}

func getSandbox(tx *bolt.Tx, id string) (Sandbox, error) {
	_, sbb, err := buckets(tx)
	if err != nil {
		return Sandbox{}, err
	}
	data := sbb.Get([]byte(id))
	if data == nil {
		return Sandbox{}, errdefs.NotFound("sandbox %q not found", id)
	}
	return decodeSandbox([]byte(id), data)
}

// Sandboxes returns every sandbox, ordered by id.
func (s *Store) Sandboxes() ([]Sandbox, error) {
	var out []Sandbox
	err := s.db.View(func(tx *bolt.Tx) error {
		_, sbb, err := buckets(tx)
		if err != nil {
			return err
		}
		return sbb.ForEach(func(k, v []byte) error {
			sb, err := decodeSandbox(k, v)
			if err != nil {
				return err
			}
			out = append(out, sb)
			return nil
		})
	})
	return out, err
}

// SandboxesUsing returns the sandboxes restored from any build of template
// name, ordered by id: what a forced template delete must delete first.
func (s *Store) SandboxesUsing(name string) ([]Sandbox, error) {
	all, err := s.Sandboxes()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(sb Sandbox) bool { return sb.Template != name }), nil
}

// UpdateSandbox reads the sandbox with the given id, lets fn change it and
// writes it back, all in one transaction; if fn returns an error nothing
// changes. The id, template and build cannot change, the state must follow
// the sandbox state machine, and UpdatedAt is set to now. fn runs inside
// the write transaction, which excludes every other writer, and may run
// more than once (concurrent changes share commits): it must only edit the
// record it is given, never block or have other effects.
func (s *Store) UpdateSandbox(id string, fn func(*Sandbox) error) (Sandbox, error) {
	var out Sandbox
	err := s.writeSandbox(func(tx *bolt.Tx) error {
		old, err := getSandbox(tx, id)
		if err != nil {
			return err
		}
		sb := old
		sb.Create = slices.Clone(old.Create) // fn must not reach old through a shared array
		if err := fn(&sb); err != nil {
			return err
		}
		if sb.ID != old.ID || sb.Template != old.Template || sb.Build != old.Build {
			return errdefs.InvalidArgument("sandbox %q: id, template and build cannot change", id)
		}
		if !old.State.CanMoveTo(sb.State) {
			return errdefs.FailedPrecondition("sandbox %q is %s and cannot become %s", id, old.State, sb.State)
		}
		sb.UpdatedAt = time.Now().UTC()
		if err := sb.Validate(); err != nil {
			return err
		}
		data, err := encode(&sb)
		if err != nil {
			return err
		}
		out = sb
		_, sbb, _ := buckets(tx)
		return sbb.Put([]byte(id), data)
	})
	return out, err
}

// DeleteSandbox deletes the record of the sandbox with the given id, which
// must be creating (a create being rolled back), stopping or failed.
func (s *Store) DeleteSandbox(id string) error {
	return s.writeSandbox(func(tx *bolt.Tx) error {
		sb, err := getSandbox(tx, id)
		if err != nil {
			return err
		}
		if !slices.Contains(deletableStates, sb.State) {
			return errdefs.FailedPrecondition("sandbox %q is %s: stop it before deleting its record", id, sb.State)
		}
		_, sbb, _ := buckets(tx)
		return sbb.Delete([]byte(id))
	})
}

// Check verifies the whole store: bbolt's own page consistency, the schema
// version, that every record decodes and is valid under its key, that every
// sandbox names an existing ready build, and that no ephemeral id is stored
// (record validation refuses the "build-" prefix for every id and name).
// It returns every violation found, joined. Tests run it in cleanup.
func (s *Store) Check() error {
	var errs []error
	err := s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			errs = append(errs, fmt.Errorf("bbolt: %w", err))
		}
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			errs = append(errs, errors.New("bucket meta missing"))
		} else if raw := meta.Get(keySchema); len(raw) != 8 || binary.BigEndian.Uint64(raw) != SchemaVersion {
			errs = append(errs, fmt.Errorf("schema version %x, want %d", raw, SchemaVersion))
		}
		if err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			if !slices.ContainsFunc([][]byte{bucketMeta, bucketTemplates, bucketSandboxes}, func(b []byte) bool { return string(b) == string(name) }) {
				errs = append(errs, fmt.Errorf("unexpected bucket %q", name))
			}
			return nil
		}); err != nil {
			return err
		}
		tbk, sbb, err := buckets(tx)
		if err != nil {
			errs = append(errs, err)
			return nil
		}
		templates := map[string]Template{}
		_ = tbk.ForEach(func(k, v []byte) error {
			t, err := decodeTemplate(k, v)
			if err != nil {
				errs = append(errs, err)
				return nil
			}
			templates[t.Name] = t
			return nil
		})
		_ = sbb.ForEach(func(k, v []byte) error {
			sb, err := decodeSandbox(k, v)
			if err != nil {
				errs = append(errs, err)
				return nil
			}
			t, ok := templates[sb.Template]
			if !ok {
				errs = append(errs, fmt.Errorf("sandbox %q: template %q does not exist", sb.ID, sb.Template))
				return nil
			}
			b := t.BuildByID(sb.Build)
			switch {
			case b == nil:
				errs = append(errs, fmt.Errorf("sandbox %q: template %q has no build %q", sb.ID, sb.Template, sb.Build))
			case b.State != BuildReady:
				errs = append(errs, fmt.Errorf("sandbox %q: build %s/%s is %s, not ready", sb.ID, sb.Template, sb.Build, b.State))
			}
			return nil
		})
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
