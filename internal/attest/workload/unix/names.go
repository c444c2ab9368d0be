package unix

import (
	"errors"
	"os/user"
	"strconv"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// DefaultNameCacheTTL is how long a resolved user or group name is reused
// when Config.NameCacheTTL is 0.
const DefaultNameCacheTTL = 30 * time.Second

// racyWindow: a name database changed less than this long ago is not
// cached from, because a second change within the file system's timestamp
// granularity could leave its size, mtime and ctime unchanged.
const racyWindow = 2 * time.Second

// maxCachedNames bounds each cache; when full it is emptied.
const maxCachedNames = 4096

// lookupFunc resolves an ID to a name. found false with a nil error means
// the database has no such ID; an error means the answer is unknown.
type lookupFunc func(id uint32) (name string, found bool, err error)

// nameCache caches ID→name answers of one name database (users or
// groups). Every use stats the database file; any change of its identity,
// size, mtime or ctime drops the cache, and each answer also expires after
// ttl (for NSS sources other than the file, in cgo builds). Lookup errors
// are never cached.
type nameCache struct {
	file   string
	lookup lookupFunc
	ttl    time.Duration // < 0: no caching
	clk    clock.Clock
	racy   time.Duration // racyWindow; tests shorten it

	mu    sync.Mutex
	sig   fileSig
	names map[uint32]cachedName
}

type cachedName struct {
	name  string
	found bool
	at    time.Time
}

func newNameCache(file string, lookup lookupFunc, ttl time.Duration, clk clock.Clock) *nameCache {
	if ttl == 0 {
		ttl = DefaultNameCacheTTL
	}
	return &nameCache{file: file, lookup: lookup, ttl: ttl, clk: clock.OrReal(clk), racy: racyWindow, names: make(map[uint32]cachedName)}
}

// name returns the name of id, and whether there is one.
func (c *nameCache) name(id uint32) (string, bool) {
	if c.ttl < 0 {
		name, found, err := c.lookup(id)
		return name, found && err == nil
	}
	sig, changedAt, stable := statFile(c.file)
	now := c.clk.Now()
	c.mu.Lock()
	if sig != c.sig {
		clear(c.names)
		c.sig = sig
	}
	if e, ok := c.names[id]; ok && now.Sub(e.at) < c.ttl {
		c.mu.Unlock()
		return e.name, e.found
	}
	c.mu.Unlock()

	name, found, err := c.lookup(id)
	if err != nil {
		return "", false
	}
	// A change after statFile shows as a new signature on the next call,
	// which drops what is stored here under the old one. Nothing is cached
	// from a database that cannot be stat'ed.
	if stable && time.Since(changedAt) >= c.racy {
		c.mu.Lock()
		if c.sig == sig {
			if len(c.names) >= maxCachedNames {
				clear(c.names)
			}
			c.names[id] = cachedName{name: name, found: found, at: now}
		}
		c.mu.Unlock()
	}
	return name, found
}

func lookupUser(id uint32) (string, bool, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(id), 10))
	if err != nil {
		if errors.As(err, new(user.UnknownUserIdError)) {
			return "", false, nil
		}
		return "", false, err
	}
	return u.Username, true, nil
}

func lookupGroup(id uint32) (string, bool, error) {
	g, err := user.LookupGroupId(strconv.FormatUint(uint64(id), 10))
	if err != nil {
		if errors.As(err, new(user.UnknownGroupIdError)) {
			return "", false, nil
		}
		return "", false, err
	}
	return g.Name, true, nil
}
