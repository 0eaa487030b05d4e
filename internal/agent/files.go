package agent

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/thawvm/thaw/internal/agentapi"
)

// checkDir reports whether p is an existing directory, with a clear error.
func checkDir(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return agentapi.Errorf(agentapi.KindNotFound, "directory %s does not exist", p)
		}
		return err
	}
	if !fi.IsDir() {
		return agentapi.Errorf(agentapi.KindPrecondition, "%s is not a directory", p)
	}
	return nil
}

// isPrecondition reports file system errors that mean "the file is not in the
// state this operation needs".
func isPrecondition(err error) bool {
	return errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EISDIR) ||
		errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EXDEV) ||
		errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.EINVAL)
}

func fileInfo(p string, fi os.FileInfo) agentapi.FileInfo {
	out := agentapi.FileInfo{
		Path:    p,
		Name:    fi.Name(),
		Size:    fi.Size(),
		Mode:    uint32(fi.Mode().Perm()),
		ModTime: fi.ModTime(),
	}
	m := fi.Mode()
	if m&os.ModeSetuid != 0 {
		out.Mode |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		out.Mode |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		out.Mode |= 0o1000
	}
	switch {
	case m.IsRegular():
		out.Type = agentapi.TypeFile
	case m.IsDir():
		out.Type = agentapi.TypeDir
	case m&os.ModeSymlink != 0:
		out.Type = agentapi.TypeSymlink
		out.Target, _ = os.Readlink(p)
	default:
		out.Type = agentapi.TypeOther
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		out.UID, out.GID = int(st.Uid), int(st.Gid)
	}
	return out
}

func queryPath(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if err := agentapi.CheckPath(p); err != nil {
		return "", err
	}
	return p, nil
}

func (s *Server) handleStat(w http.ResponseWriter, r *http.Request) {
	p, err := queryPath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	fi, err := os.Lstat(p)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fileInfo(p, fi))
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	p, err := queryPath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	ents, err := os.ReadDir(p)
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]agentapi.FileInfo, 0, len(ents))
	for _, e := range ents {
		fi, err := e.Info()
		if errors.Is(err, os.ErrNotExist) {
			continue // removed while we listed
		}
		if err != nil {
			writeError(w, err)
			return
		}
		out = append(out, fileInfo(filepath.Join(p, e.Name()), fi))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request) {
	p, err := queryPath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	f, err := os.Open(p)
	if err != nil {
		writeError(w, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeError(w, err)
		return
	}
	if !fi.Mode().IsRegular() {
		writeError(w, agentapi.Errorf(agentapi.KindPrecondition, "%s is not a regular file (it is a %s): only files can be downloaded", p, fileInfo(p, fi).Type))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(fi.Size(), 10))
	w.WriteHeader(http.StatusOK)
	// A file that grows or shrinks meanwhile ends the response early or
	// short; the client sees a length mismatch.
	io.Copy(w, io.LimitReader(f, fi.Size()))
}

// owner resolves the user files are created for: spec, else the init
// default, else nobody in particular (-1: keep the agent's).
func (s *Server) owner(spec string) (uid, gid int, err error) {
	spec = firstNonEmpty(spec, s.initDefaults().user)
	if spec == "" {
		return -1, -1, nil
	}
	a, err := lookupUser(s.cfg.EtcDir, spec)
	if err != nil {
		return 0, 0, err
	}
	if int(a.uid) == os.Geteuid() && int(a.gid) == os.Getegid() {
		return -1, -1, nil
	}
	if os.Geteuid() != 0 {
		return 0, 0, agentapi.Errorf(agentapi.KindPermission, "creating files for uid %d:%d needs the agent to run as root", a.uid, a.gid)
	}
	return int(a.uid), int(a.gid), nil
}

func parseMode(s string, def os.FileMode) (os.FileMode, error) {
	if s == "" {
		return def, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 {
		return 0, agentapi.Errorf(agentapi.KindInvalid, "mode %q: want octal permission bits such as 644", s)
	}
	return unixMode(uint32(m)), nil
}

// unixMode converts permission, setuid, setgid and sticky bits to an
// os.FileMode.
func unixMode(m uint32) os.FileMode {
	fm := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request) {
	p, err := queryPath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	mode, err := parseMode(q.Get("mode"), 0o644)
	if err != nil {
		writeError(w, err)
		return
	}
	mkdirs := false
	if v := q.Get("mkdirs"); v != "" {
		if mkdirs, err = strconv.ParseBool(v); err != nil {
			writeError(w, agentapi.Errorf(agentapi.KindInvalid, "mkdirs %q: want true or false", v))
			return
		}
	}
	uid, gid, err := s.owner(q.Get("user"))
	if err != nil {
		writeError(w, err)
		return
	}
	fi, err := upload(p, r.Body, mode, mkdirs, uid, gid)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fi)
}

// upload writes body to a temporary file next to p and renames it over p
// once complete, so readers never see a half-written file and a broken
// upload leaves nothing behind.
func upload(p string, body io.Reader, mode os.FileMode, mkdirs bool, uid, gid int) (agentapi.FileInfo, error) {
	if p == "/" {
		return agentapi.FileInfo{}, agentapi.Errorf(agentapi.KindInvalid, "cannot upload to /")
	}
	dir := filepath.Dir(p)
	if mkdirs {
		if err := mkdirAll(dir, 0o755, uid, gid); err != nil {
			return agentapi.FileInfo{}, err
		}
	}
	if fi, err := os.Stat(p); err == nil && fi.IsDir() {
		return agentapi.FileInfo{}, agentapi.Errorf(agentapi.KindPrecondition, "%s is a directory: upload to a file path inside it", p)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(p)+".upload-*")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return agentapi.FileInfo{}, agentapi.Errorf(agentapi.KindNotFound, "directory %s does not exist (set mkdirs to create it)", dir)
		}
		return agentapi.FileInfo{}, fmt.Errorf("creating temporary file in %s: %w", dir, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, body); err != nil {
		return agentapi.FileInfo{}, fmt.Errorf("receiving %s: %w", p, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return agentapi.FileInfo{}, fmt.Errorf("chmod %s: %w", p, err)
	}
	if uid >= 0 {
		if err := tmp.Chown(uid, gid); err != nil {
			return agentapi.FileInfo{}, fmt.Errorf("chown %s: %w", p, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return agentapi.FileInfo{}, fmt.Errorf("writing %s: %w", p, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return agentapi.FileInfo{}, fmt.Errorf("moving upload into place at %s: %w", p, err)
	}
	done = true
	fi, err := os.Lstat(p)
	if err != nil {
		return agentapi.FileInfo{}, err
	}
	return fileInfo(p, fi), nil
}

// mkdirAll creates dir and missing parents, owning the new ones by uid:gid
// (-1 keeps the agent's).
func mkdirAll(dir string, mode os.FileMode, uid, gid int) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return agentapi.Errorf(agentapi.KindPrecondition, "%s exists and is not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAll(parent, mode, uid, gid); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, mode); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if uid >= 0 {
		if err := os.Lchown(dir, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) handleMkdir(w http.ResponseWriter, r *http.Request) {
	var req agentapi.MkdirRequest
	if !readJSON(w, r, &req) {
		return
	}
	if err := agentapi.CheckPath(req.Path); err != nil {
		writeError(w, err)
		return
	}
	mode := os.FileMode(0o755)
	if req.Mode != 0 {
		if req.Mode > 0o7777 {
			writeError(w, agentapi.Errorf(agentapi.KindInvalid, "mode %o: want permission bits up to 7777", req.Mode))
			return
		}
		mode = unixMode(req.Mode)
	}
	uid, gid, err := s.owner(req.User)
	if err != nil {
		writeError(w, err)
		return
	}
	if req.Parents {
		err = mkdirAll(req.Path, mode, uid, gid)
	} else {
		err = os.Mkdir(req.Path, mode)
		if err == nil && uid >= 0 {
			err = os.Lchown(req.Path, uid, gid)
		}
	}
	if err == nil {
		// Mkdir's mode goes through the umask; set it as asked.
		err = os.Chmod(req.Path, mode)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	fi, err := os.Lstat(req.Path)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fileInfo(req.Path, fi))
}

func (s *Server) handleRemove(w http.ResponseWriter, r *http.Request) {
	var req agentapi.RemoveRequest
	if !readJSON(w, r, &req) {
		return
	}
	if err := agentapi.CheckPath(req.Path); err != nil {
		writeError(w, err)
		return
	}
	if req.Path == "/" {
		writeError(w, agentapi.Errorf(agentapi.KindInvalid, "refusing to remove /"))
		return
	}
	if _, err := os.Lstat(req.Path); err != nil {
		writeError(w, err)
		return
	}
	var err error
	if req.Recursive {
		err = os.RemoveAll(req.Path)
	} else {
		err = os.Remove(req.Path)
		if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			err = agentapi.Errorf(agentapi.KindPrecondition, "directory %s is not empty: set recursive to remove it and its contents", req.Path)
		}
	}
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleRename(w http.ResponseWriter, r *http.Request) {
	var req agentapi.RenameRequest
	if !readJSON(w, r, &req) {
		return
	}
	for _, p := range []string{req.From, req.To} {
		if err := agentapi.CheckPath(p); err != nil {
			writeError(w, err)
			return
		}
	}
	if req.From == "/" || req.To == "/" {
		writeError(w, agentapi.Errorf(agentapi.KindInvalid, "cannot rename / or onto /"))
		return
	}
	if err := os.Rename(req.From, req.To); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
