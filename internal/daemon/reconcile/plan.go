// Package reconcile decides what thawd must do to bring its sandbox records
// and the shims actually running on the host back into agreement: at start
// (re-attaching every live shim after a restart) and periodically. Plan is a
// pure function from records and live shims to actions, so every rule is
// tested without processes; carrying the actions out is the daemon's job.
//
// Destructive actions (failing a record, stopping a shim, finishing a
// teardown, expiring a sandbox) are capped per pass: if discovery of live
// shims ever breaks and reports none, one pass must not fail every sandbox
// on the host. Ephemeral VMs (ids starting "build-") are ignored.
//
// A recorded shim that is alive but does not answer is left alone (on a
// loaded host a slow shim is not a dead one) until it has been silent in
// every pass for SilentLimit: then it is wedged, and its record is failed
// and the shim stopped, a destructive action like any other.
package reconcile

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/thawvm/thaw/internal/daemon/store"
)

// Live is a shim found running on the host.
type Live struct {
	// ID is the sandbox id the shim says it serves.
	ID            string
	PID           int
	StartTime     uint64
	ControlSocket string
}

// Silent is a shim that did not answer discovery although the process its
// record names (pid and start time) is alive: slow on a loaded host, or
// wedged.
type Silent struct {
	ID            string
	PID           int
	StartTime     uint64
	ControlSocket string
	// Since is when a pass first found it silent; every pass since found
	// it silent too (one that finds it answering starts over).
	Since time.Time
}

// Kind is what an action does.
type Kind int

// The action kinds, in the order a capped pass carries them out.
const (
	// Reattach: the record's shim is alive; connect to it again. Not
	// destructive, never capped.
	Reattach Kind = iota
	// FailRecord: the record's sandbox cannot be running (its shim is
	// gone, or its create was interrupted); mark it failed with Reason,
	// and stop Shim if it is set.
	FailRecord
	// StopShim: a live shim has no record, does not match its record, or
	// serves a failed or paused sandbox; stop it (after collecting its
	// exit status, if any).
	StopShim
	// FinishStop: the record is stopping; finish the teardown (stop the
	// shim if live, remove the directory, delete the record).
	FinishStop
	// Expire: the sandbox's TTL has passed; delete it.
	Expire
)

func (k Kind) String() string {
	switch k {
	case Reattach:
		return "reattach"
	case FailRecord:
		return "fail-record"
	case StopShim:
		return "stop-shim"
	case FinishStop:
		return "finish-stop"
	case Expire:
		return "expire"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Destructive reports whether actions of kind k count against the cap.
func (k Kind) Destructive() bool { return k != Reattach }

// Action is one thing to do.
type Action struct {
	Kind    Kind
	Sandbox string
	// Shim is the live shim the action concerns, if any.
	Shim *Live
	// Reason says why, for logs and for the failed record.
	Reason string
}

// Input is what a pass decides on.
type Input struct {
	Records []store.Sandbox
	Live    []Live
	Now     time.Time
	// CreatingGrace is how old a creating record may be before it counts
	// as abandoned. Creates run inside thawd, so at start (after a
	// restart) it is 0: every creating record is abandoned. Periodic
	// passes use more than the longest create can take.
	CreatingGrace time.Duration
	// MaxDestructive caps destructive actions; 0 means report only.
	MaxDestructive int
	// Silent are the recorded shims that are alive but did not answer.
	// One silent for SilentLimit or longer is wedged: its record is
	// failed and it is stopped. One silent for less is left alone (a
	// slow shim is not a dead one), as is every one when SilentLimit is
	// 0.
	Silent      []Silent
	SilentLimit time.Duration
}

// Plan is the outcome of a pass.
type Plan struct {
	// Actions to carry out, in order: reattachments, then destructive
	// actions by kind and sandbox id, at most MaxDestructive of them.
	Actions []Action
	// Deferred are the destructive actions the cap held back; the next
	// pass will find them again.
	Deferred []Action
	// Waiting are the sandboxes whose shim is silent but not yet for
	// SilentLimit: nothing is done to them this pass.
	Waiting []Action
}

// Decide computes the actions for one pass.
func Decide(in Input) Plan {
	var acts []Action
	live := map[string][]Live{}
	for _, l := range in.Live {
		if strings.HasPrefix(l.ID, store.EphemeralPrefix) {
			continue
		}
		live[l.ID] = append(live[l.ID], l)
	}
	claimed := map[*Live]bool{} // live shims a record accounts for
	silent := map[string]*Silent{}
	for i := range in.Silent {
		silent[in.Silent[i].ID] = &in.Silent[i]
	}
	var waiting []Action
	for _, r := range in.Records {
		shims := live[r.ID]
		var match *Live
		for i := range shims {
			if r.Shim.PID != 0 && shims[i].PID == r.Shim.PID && shims[i].StartTime == r.Shim.StartTime {
				match = &shims[i]
			}
		}
		if match != nil {
			claimed[match] = true
		}
		expired := !r.ExpiresAt.IsZero() && !in.Now.Before(r.ExpiresAt)
		switch r.State {
		case store.Running, store.Pausing, store.Resuming:
			quiet := silent[r.ID]
			if quiet != nil && (quiet.PID != r.Shim.PID || quiet.StartTime != r.Shim.StartTime) {
				quiet = nil // not the recorded shim
			}
			switch {
			case match == nil && quiet != nil:
				silentFor := in.Now.Sub(quiet.Since)
				if in.SilentLimit <= 0 || silentFor < in.SilentLimit {
					waiting = append(waiting, Action{Kind: FailRecord, Sandbox: r.ID,
						Shim:   &Live{ID: quiet.ID, PID: quiet.PID, StartTime: quiet.StartTime, ControlSocket: quiet.ControlSocket},
						Reason: fmt.Sprintf("shim (pid %d) is alive but has not answered for %v", quiet.PID, silentFor.Round(time.Second))})
					continue
				}
				acts = append(acts, Action{Kind: FailRecord, Sandbox: r.ID,
					Shim: &Live{ID: quiet.ID, PID: quiet.PID, StartTime: quiet.StartTime, ControlSocket: quiet.ControlSocket},
					Reason: fmt.Sprintf("shim (pid %d) is alive but its control socket has not answered for %v (the limit, shim_unresponsive_limit, is %v): "+
						"wedged, so it was stopped; the sandbox was %s", quiet.PID, silentFor.Round(time.Second), in.SilentLimit, r.State)})
			case match == nil:
				acts = append(acts, Action{Kind: FailRecord, Sandbox: r.ID,
					Reason: fmt.Sprintf("shim (pid %d) is gone; the sandbox was %s", r.Shim.PID, r.State)})
			case expired:
				acts = append(acts, Action{Kind: Expire, Sandbox: r.ID, Shim: match, Reason: "TTL expired at " + r.ExpiresAt.UTC().Format(time.RFC3339)})
			default:
				acts = append(acts, Action{Kind: Reattach, Sandbox: r.ID, Shim: match})
			}
		case store.Creating:
			if in.Now.Sub(r.CreatedAt) >= in.CreatingGrace {
				reason := fmt.Sprintf("create did not finish within %v (thawd restarted during it?)", in.CreatingGrace)
				if in.CreatingGrace == 0 {
					reason = "create interrupted: thawd stopped before it finished"
				}
				acts = append(acts, Action{Kind: FailRecord, Sandbox: r.ID, Shim: match, Reason: reason})
			}
		case store.Paused:
			if expired {
				acts = append(acts, Action{Kind: Expire, Sandbox: r.ID, Reason: "TTL expired at " + r.ExpiresAt.UTC().Format(time.RFC3339)})
			}
		case store.Stopping:
			acts = append(acts, Action{Kind: FinishStop, Sandbox: r.ID, Shim: match, Reason: "teardown was interrupted"})
		case store.Failed:
			if match != nil {
				acts = append(acts, Action{Kind: StopShim, Sandbox: r.ID, Shim: match, Reason: "the sandbox failed: " + r.Reason})
			}
		}
	}
	// Live shims no record accounts for: unknown sandboxes, or a second
	// shim for a known one (pid or start time differ from the record).
	// A creating record's shim may not be recorded yet; leave it to the
	// record's own rule unless that record is abandoned.
	creating := map[string]bool{}
	for _, r := range in.Records {
		if r.State == store.Creating && in.Now.Sub(r.CreatedAt) < in.CreatingGrace {
			creating[r.ID] = true
		}
	}
	for id, shims := range live {
		for i := range shims {
			l := &shims[i]
			if claimed[l] || creating[id] {
				continue
			}
			acts = append(acts, Action{Kind: StopShim, Sandbox: id, Shim: l,
				Reason: fmt.Sprintf("shim pid %d serves sandbox %q, which no record accounts for", l.PID, id)})
		}
	}
	slices.SortStableFunc(acts, func(a, b Action) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), strings.Compare(a.Sandbox, b.Sandbox), cmp.Compare(pid(a), pid(b)))
	})
	p := Plan{Waiting: waiting}
	budget := max(in.MaxDestructive, 0)
	for _, a := range acts {
		if a.Kind.Destructive() {
			if budget == 0 {
				p.Deferred = append(p.Deferred, a)
				continue
			}
			budget--
		}
		p.Actions = append(p.Actions, a)
	}
	return p
}

func pid(a Action) int {
	if a.Shim == nil {
		return 0
	}
	return a.Shim.PID
}
