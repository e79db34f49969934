package agent

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"
)

// Auth guards the HTTP endpoint: a request passes with the bearer token or
// with one of the user:password pairs (HTTP basic authentication). A nil
// or empty Auth lets every request pass.
type Auth struct {
	Token string
	// Users maps a user name to its password.
	Users map[string]string
}

// ParseBasicAuthFile parses "user:password" lines (blank lines and lines
// starting with # are skipped). Errors never contain a password.
func ParseBasicAuthFile(data string) (map[string]string, error) {
	users := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u, p, ok := strings.Cut(line, ":")
		if !ok || u == "" || p == "" {
			return nil, fmt.Errorf("line %d: want user:password", n)
		}
		users[u] = p
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("no user:password line")
	}
	return users, nil
}

func (a *Auth) empty() bool { return a == nil || (a.Token == "" && len(a.Users) == 0) }

// equal compares in constant time (of the hashes: lengths do not leak).
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// Allowed reports whether r carries valid credentials.
func (a *Auth) Allowed(r *http.Request) bool {
	if a.empty() {
		return true
	}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && a.Token != "" && equal(strings.TrimSpace(tok), a.Token) {
		return true
	}
	if u, p, ok := r.BasicAuth(); ok {
		if want, known := a.Users[u]; known && equal(p, want) {
			return true
		}
		// A token given as the basic-auth password works too (browsers
		// can send nothing else).
		if a.Token != "" && equal(p, a.Token) {
			return true
		}
	}
	return false
}

// Wrap returns h behind the authentication.
func (a *Auth) Wrap(h http.Handler) http.Handler {
	if a.empty() {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.Allowed(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="synbak", charset="UTF-8"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
