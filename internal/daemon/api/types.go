package api

import (
	"time"

	"github.com/thawvm/thaw/internal/daemon/slots"
	"github.com/thawvm/thaw/internal/daemon/store"
	"github.com/thawvm/thaw/internal/shim"
	"github.com/thawvm/thaw/internal/thawapi"
)

// slotsOut converts the restore slots' stats to the wire type.
func slotsOut(st slots.Stats) thawapi.SlotStats {
	return thawapi.SlotStats{Limit: st.Limit, InUse: st.InUse, Waiting: st.Waiting}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func phasesOut(ps []store.Phase) ([]thawapi.Phase, float64) {
	out := make([]thawapi.Phase, len(ps))
	var total time.Duration
	for i, p := range ps {
		out[i] = thawapi.Phase{Name: p.Name, DurationMS: ms(p.Duration)}
		total += p.Duration
	}
	return out, ms(total)
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func templateOut(t store.Template) thawapi.Template {
	out := thawapi.Template{Name: t.Name, Current: t.Current, Builds: make([]thawapi.Build, len(t.Builds)), CreatedAt: t.CreatedAt}
	for i, b := range t.Builds {
		timings, _ := phasesOut(b.Timings)
		out.Builds[i] = thawapi.Build{
			ID: b.ID, State: string(b.State), Reason: b.Reason,
			VCPUs: b.VCPUs, MemoryMiB: b.MemoryMiB, DiskMiB: b.DiskMiB,
			MemoryBytes: b.MemoryBytes, RootfsBytes: b.RootfsBytes, AccessLogPages: b.AccessLogPages,
			Recorded: b.Artifacts.AccessLog != "",
			Ready:    readyOut(b.Ready),
			Timings:  timings, CreatedAt: b.CreatedAt, FinishedAt: timePtr(b.FinishedAt),
		}
	}
	return out
}

func sandboxOut(sb store.Sandbox) thawapi.Sandbox {
	create, total := phasesOut(sb.Create)
	return thawapi.Sandbox{
		ID: sb.ID, Template: sb.Template, Build: sb.Build, State: string(sb.State), Reason: sb.Reason,
		UFFD: sb.UFFD, ShimPID: sb.Shim.PID, Create: create, CreateMS: total,
		CreatedAt: sb.CreatedAt, ExpiresAt: timePtr(sb.ExpiresAt),
	}
}

// pagesOut converts a shim's page-server stats to the wire type.
func pagesOut(ps shim.PageStats) *thawapi.PageServer {
	out := &thawapi.PageServer{Prefetch: ps.Prefetch, OrderPages: ps.OrderPages, Faults: ps.Faults, FaultPages: ps.FaultPages,
		ZeroPages: ps.ZeroPages, PrefetchedPages: ps.PrefetchedPages, PrefetchDone: ps.PrefetchDone,
		PrefetchRate: ps.PrefetchRate, PrefetchWaitMS: ms(ps.PrefetchWait)}
	if ps.PrefetchDone {
		out.PrefetchMS = ms(ps.PrefetchTime)
	}
	return out
}

func readyOut(r store.ReadyCheck) thawapi.ReadyCheck {
	if r.Kind == "" {
		r.Kind = store.ReadyAgent
	}
	return thawapi.ReadyCheck{Kind: string(r.Kind), Marker: r.Marker}
}
