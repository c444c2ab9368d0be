package systemd

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// This file is a minimal D-Bus client (D-Bus Specification, "Message
// Protocol" and "Authentication Protocol"): a unix socket connection to the
// bus, SASL EXTERNAL authentication, Hello, and method calls whose
// arguments are strings and uint32s and whose replies are read for an
// object path, a string or a variant holding a string. That is all the
// systemd attestor needs. It adds 60 KiB to the release-built agent, where
// a general client (github.com/godbus/dbus/v5 v5.2.4, doing the same
// calls) adds 280 KiB.
//
// Replies are matched to calls by serial only. On a system bus that is
// enough: dbus-daemon delivers a method return or error only as the
// answer to a call this connection made, from the connection it was sent
// to (its pending-reply tracking, and the system bus policy's
// send_requested_reply).

// Message types and header fields of the D-Bus wire format.
const (
	msgMethodCall   = 1
	msgMethodReturn = 2
	msgError        = 3

	fieldPath        = 1
	fieldInterface   = 2
	fieldMember      = 3
	fieldErrorName   = 4
	fieldReplySerial = 5
	fieldDestination = 6
	fieldSignature   = 8
)

// Limits on what is read from the bus: the replies read here are a few
// hundred bytes.
const (
	maxHeaderFields = 64 << 10
	maxBody         = 1 << 20
	maxDepth        = 64
)

// DefaultSystemBus is the system bus's socket when DBUS_SYSTEM_BUS_ADDRESS
// is not set (the D-Bus specification's default).
const DefaultSystemBus = "unix:path=/run/dbus/system_bus_socket"

// BusError is an error reply: its D-Bus error name and message.
type BusError struct {
	Name    string
	Message string
}

func (e *BusError) Error() string {
	if e.Message == "" {
		return e.Name
	}
	return e.Name + ": " + e.Message
}

// socketOf returns the dial address of the first unix address of a D-Bus
// server address list ("unix:path=/run/dbus/system_bus_socket",
// "unix:abstract=/tmp/dbus-x,guid=...;tcp:..."): a path, or "@name" for an
// abstract socket.
func socketOf(address string) (string, error) {
	for _, a := range strings.Split(address, ";") {
		kv, ok := strings.CutPrefix(a, "unix:")
		if !ok {
			continue
		}
		for _, p := range strings.Split(kv, ",") {
			k, v, _ := strings.Cut(p, "=")
			v, err := url.PathUnescape(v)
			if err != nil {
				return "", fmt.Errorf("D-Bus address %s: %v", clip.Quote(address), err)
			}
			switch k {
			case "path":
				return v, nil
			case "abstract":
				return "@" + v, nil
			}
		}
	}
	return "", fmt.Errorf("D-Bus address %s has no unix:path= or unix:abstract= address", clip.Quote(address))
}

// bus is a pool of authenticated connections to one bus. Each call takes
// an idle connection (or makes one), uses it alone, and gives it back if
// nothing went wrong; no goroutine reads in the background.
type bus struct {
	socket string

	mu   sync.Mutex
	idle []*conn
}

// maxIdle bounds the idle connections kept.
const maxIdle = 4

type conn struct {
	c      net.Conn
	r      *bufio.Reader
	serial uint32
	reused bool
}

func (b *bus) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.idle {
		_ = c.c.Close()
	}
	b.idle = nil
}

// get returns an idle connection or a new one (dialled, authenticated and
// registered with Hello, within ctx).
func (b *bus) get(ctx context.Context) (*conn, error) {
	b.mu.Lock()
	if n := len(b.idle); n > 0 {
		c := b.idle[n-1]
		b.idle = b.idle[:n-1]
		b.mu.Unlock()
		c.reused = true
		return c, nil
	}
	b.mu.Unlock()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", b.socket)
	if err != nil {
		return nil, err
	}
	c := &conn{c: nc, r: bufio.NewReaderSize(nc, 4096)}
	stop := c.watch(ctx)
	err = c.auth()
	if err == nil {
		_, err = c.call(methodCall{dest: "org.freedesktop.DBus", path: "/org/freedesktop/DBus", iface: "org.freedesktop.DBus", member: "Hello"})
	}
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

// put gives c back to the pool.
func (b *bus) put(c *conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.idle) >= maxIdle {
		_ = c.c.Close()
		return
	}
	b.idle = append(b.idle, c)
}

// watch makes the connection's I/O fail when ctx is done (its deadline,
// or a cancellation); stop ends that and reports false if ctx was done.
func (c *conn) watch(ctx context.Context) (stop func() bool) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.c.SetDeadline(dl)
	}
	cancel := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
	return func() bool {
		ok := cancel()
		_ = c.c.SetDeadline(time.Time{})
		return ok
	}
}

// auth runs the SASL exchange: a NUL byte, AUTH EXTERNAL with our UID,
// OK, BEGIN.
func (c *conn) auth() error {
	uid := hex.EncodeToString([]byte(strconv.Itoa(os.Getuid())))
	if _, err := io.WriteString(c.c, "\x00AUTH EXTERNAL "+uid+"\r\n"); err != nil {
		return fmt.Errorf("D-Bus authentication: %w", err)
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("D-Bus authentication: %w", err)
	}
	if !strings.HasPrefix(line, "OK ") {
		return fmt.Errorf("D-Bus authentication: the bus answered %s to AUTH EXTERNAL", clip.Quote(strings.TrimSpace(line)))
	}
	if _, err := io.WriteString(c.c, "BEGIN\r\n"); err != nil {
		return fmt.Errorf("D-Bus authentication: %w", err)
	}
	return nil
}

// methodCall is a call whose arguments are strings and uint32s (args:
// string or uint32, in order).
type methodCall struct {
	dest, path, iface, member string
	args                      []any
}

// reply is a method return's body with its signature.
type reply struct {
	sig   string
	body  []byte
	order binary.ByteOrder
}

// send writes m and returns its serial.
func (c *conn) send(m methodCall) (uint32, error) {
	c.serial++
	var body encoder
	sig := ""
	for _, a := range m.args {
		switch v := a.(type) {
		case string:
			sig += "s"
			body.str(v)
		case uint32:
			sig += "u"
			body.u32(v)
		default:
			panic(fmt.Sprintf("dbus: argument of type %T", a))
		}
	}
	var h encoder
	h.b = append(h.b, 'l', msgMethodCall, 0, 1)
	h.u32(uint32(len(body.b)))
	h.u32(c.serial)
	lenAt := len(h.b)
	h.u32(0)
	start := len(h.b)
	field := func(code byte, sig, v string) {
		h.align(8)
		h.b = append(h.b, code)
		h.sig(sig)
		if sig == "g" {
			h.sig(v)
		} else {
			h.str(v)
		}
	}
	field(fieldPath, "o", m.path)
	field(fieldInterface, "s", m.iface)
	field(fieldMember, "s", m.member)
	field(fieldDestination, "s", m.dest)
	if sig != "" {
		field(fieldSignature, "g", sig)
	}
	binary.LittleEndian.PutUint32(h.b[lenAt:], uint32(len(h.b)-start))
	h.align(8)
	if _, err := c.c.Write(append(h.b, body.b...)); err != nil {
		return 0, err
	}
	return c.serial, nil
}

// call sends m and reads until its reply (other messages, such as the
// NameAcquired signal after Hello, are skipped). An error reply is a
// *BusError.
func (c *conn) call(m methodCall) (reply, error) {
	serial, err := c.send(m)
	if err != nil {
		return reply{}, err
	}
	return c.await(serial)
}

// await reads messages until the reply to serial.
func (c *conn) await(serial uint32) (reply, error) {
	r, err := c.awaitAll(serial)
	if err != nil {
		return reply{}, err
	}
	return r[0], nil
}

// awaitAll reads messages until the replies to all of serials, which it
// returns in that order. It reads them all even after an error reply, so
// that the connection can be used again; the first error reply is then
// returned, as a *BusError.
func (c *conn) awaitAll(serials ...uint32) ([]reply, error) {
	out := make([]reply, len(serials))
	got := make([]bool, len(serials))
	var firstErr error
	for left := len(serials); left > 0; {
		h, body, order, err := c.readMessage()
		if err != nil {
			return nil, err
		}
		if h.typ != msgMethodReturn && h.typ != msgError {
			continue // a signal (NameAcquired after Hello) or a call to us
		}
		i := slices.Index(serials, h.replySerial)
		if i < 0 || got[i] {
			continue
		}
		got[i] = true
		left--
		if h.typ == msgError {
			e := &BusError{Name: clip.Cut(h.errorName, 256)}
			if strings.HasPrefix(h.signature, "s") {
				d := decoder{b: body, order: order}
				if s, err := d.str(); err == nil {
					e.Message = clip.Cut(s, 256)
				}
			}
			if firstErr == nil {
				firstErr = e
			}
			continue
		}
		out[i] = reply{sig: h.signature, body: body, order: order}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}

type header struct {
	typ         byte
	replySerial uint32
	errorName   string
	signature   string
}

// readMessage reads one message: its header fields that matter here, and
// its body.
func (c *conn) readMessage() (header, []byte, binary.ByteOrder, error) {
	var fixed [16]byte
	if _, err := io.ReadFull(c.r, fixed[:]); err != nil {
		return header{}, nil, nil, err
	}
	var order binary.ByteOrder
	switch fixed[0] {
	case 'l':
		order = binary.LittleEndian
	case 'B':
		order = binary.BigEndian
	default:
		return header{}, nil, nil, fmt.Errorf("D-Bus message with endianness byte %#x", fixed[0])
	}
	if fixed[3] != 1 {
		return header{}, nil, nil, fmt.Errorf("D-Bus message of protocol version %d", fixed[3])
	}
	bodyLen := order.Uint32(fixed[4:])
	fieldsLen := order.Uint32(fixed[12:])
	if fieldsLen > maxHeaderFields || bodyLen > maxBody {
		return header{}, nil, nil, fmt.Errorf("D-Bus message too large (header fields %d, body %d bytes)", fieldsLen, bodyLen)
	}
	headerEnd := 16 + int(fieldsLen)
	padded := (headerEnd + 7) &^ 7
	msg := make([]byte, padded+int(bodyLen))
	copy(msg, fixed[:])
	if _, err := io.ReadFull(c.r, msg[16:]); err != nil {
		return header{}, nil, nil, err
	}
	h := header{typ: fixed[1]}
	d := decoder{b: msg[:headerEnd], off: 16, order: order}
	for d.off < len(d.b) {
		if err := d.align(8); err != nil {
			return header{}, nil, nil, err
		}
		code, err := d.byte()
		if err != nil {
			return header{}, nil, nil, err
		}
		sig, err := d.sig()
		if err != nil {
			return header{}, nil, nil, err
		}
		switch {
		case code == fieldReplySerial && sig == "u":
			h.replySerial, err = d.u32()
		case code == fieldErrorName && sig == "s":
			h.errorName, err = d.str()
		case code == fieldSignature && sig == "g":
			h.signature, err = d.sig()
		default:
			err = d.skip(sig, 0)
		}
		if err != nil {
			return header{}, nil, nil, fmt.Errorf("D-Bus header field %d: %w", code, err)
		}
	}
	return h, msg[padded:], order, nil
}

// encoder writes little-endian D-Bus values; offsets are from the start of
// what it holds (a message, or a body, which starts 8-aligned).
type encoder struct{ b []byte }

func (e *encoder) align(n int) {
	for len(e.b)%n != 0 {
		e.b = append(e.b, 0)
	}
}

func (e *encoder) u32(v uint32) {
	e.align(4)
	e.b = binary.LittleEndian.AppendUint32(e.b, v)
}

func (e *encoder) str(s string) {
	e.u32(uint32(len(s)))
	e.b = append(append(e.b, s...), 0)
}

func (e *encoder) sig(s string) {
	e.b = append(append(append(e.b, byte(len(s))), s...), 0)
}

// decoder reads D-Bus values.
type decoder struct {
	b     []byte
	off   int
	order binary.ByteOrder
}

var errShort = errors.New("D-Bus value runs past the message")

func (d *decoder) align(n int) error {
	next := (d.off + n - 1) / n * n
	if next > len(d.b) {
		return errShort
	}
	d.off = next
	return nil
}

func (d *decoder) need(n int) error {
	if n < 0 || d.off+n > len(d.b) {
		return errShort
	}
	return nil
}

func (d *decoder) byte() (byte, error) {
	if err := d.need(1); err != nil {
		return 0, err
	}
	d.off++
	return d.b[d.off-1], nil
}

func (d *decoder) u32() (uint32, error) {
	if err := d.align(4); err != nil {
		return 0, err
	}
	if err := d.need(4); err != nil {
		return 0, err
	}
	d.off += 4
	return d.order.Uint32(d.b[d.off-4:]), nil
}

// str reads a string or an object path.
func (d *decoder) str() (string, error) {
	n, err := d.u32()
	if err != nil {
		return "", err
	}
	if n > maxBody {
		return "", errShort
	}
	if err := d.need(int(n) + 1); err != nil {
		return "", err
	}
	s := string(d.b[d.off : d.off+int(n)])
	if d.b[d.off+int(n)] != 0 {
		return "", errors.New("D-Bus string not NUL-terminated")
	}
	d.off += int(n) + 1
	return s, nil
}

func (d *decoder) sig() (string, error) {
	n, err := d.byte()
	if err != nil {
		return "", err
	}
	if err := d.need(int(n) + 1); err != nil {
		return "", err
	}
	s := string(d.b[d.off : d.off+int(n)])
	d.off += int(n) + 1
	return s, nil
}

// skip passes over one value of the single complete type sig.
func (d *decoder) skip(sig string, depth int) error {
	if depth > maxDepth {
		return errors.New("D-Bus value nested too deeply")
	}
	if sig == "" {
		return errors.New("empty D-Bus signature")
	}
	fixed := func(size int) error {
		if err := d.align(size); err != nil {
			return err
		}
		if err := d.need(size); err != nil {
			return err
		}
		d.off += size
		return nil
	}
	switch sig[0] {
	case 'y':
		return fixed(1)
	case 'n', 'q':
		return fixed(2)
	case 'b', 'i', 'u', 'h':
		return fixed(4)
	case 'x', 't', 'd':
		return fixed(8)
	case 's', 'o':
		_, err := d.str()
		return err
	case 'g':
		_, err := d.sig()
		return err
	case 'v':
		inner, err := d.sig()
		if err != nil {
			return err
		}
		return d.skip(inner, depth+1)
	case 'a':
		n, err := d.u32()
		if err != nil {
			return err
		}
		if err := d.align(alignment(sig[1:])); err != nil {
			return err
		}
		if err := d.need(int(n)); err != nil {
			return err
		}
		d.off += int(n)
		return nil
	case '(':
		if err := d.align(8); err != nil {
			return err
		}
		rest := sig[1:]
		for rest != "" && rest[0] != ')' {
			one, err := completeType(rest)
			if err != nil {
				return err
			}
			if err := d.skip(one, depth+1); err != nil {
				return err
			}
			rest = rest[len(one):]
		}
		return nil
	}
	return fmt.Errorf("D-Bus signature %s not understood", clip.Quote(sig))
}

// alignment is the alignment of the first complete type of sig.
func alignment(sig string) int {
	if sig == "" {
		return 1
	}
	switch sig[0] {
	case 'n', 'q':
		return 2
	case 'b', 'i', 'u', 'h', 's', 'o', 'a':
		return 4
	case 'x', 't', 'd', '(', '{':
		return 8
	}
	return 1
}

// completeType returns the first single complete type of sig.
func completeType(sig string) (string, error) {
	if sig == "" {
		return "", errors.New("empty D-Bus signature")
	}
	switch sig[0] {
	case 'a':
		inner, err := completeType(sig[1:])
		if err != nil {
			return "", err
		}
		return sig[:1+len(inner)], nil
	case '(', '{':
		depth := 0
		for i := 0; i < len(sig); i++ {
			switch sig[i] {
			case '(', '{':
				depth++
			case ')', '}':
				depth--
				if depth == 0 {
					return sig[:i+1], nil
				}
			}
		}
		return "", fmt.Errorf("D-Bus signature %s is unbalanced", clip.Quote(sig))
	}
	return sig[:1], nil
}
