package systemd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"
)

// encode is a message as godbus writes it in byte order o, with serial
// 9.
func encode(t testing.TB, m *dbus.Message, o binary.ByteOrder) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := m.EncodeTo(&b, o); err != nil {
		t.Fatal(err)
	}
	out := b.Bytes()
	o.PutUint32(out[8:], 9)
	return out
}

func replyMessage(replySerial uint32, body ...any) *dbus.Message {
	h := map[dbus.HeaderField]dbus.Variant{
		dbus.FieldReplySerial: dbus.MakeVariant(replySerial),
		dbus.FieldSender:      dbus.MakeVariant(":1.1"),
		dbus.FieldDestination: dbus.MakeVariant(":1.42"),
	}
	if len(body) > 0 {
		h[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(body...))
	}
	return &dbus.Message{Type: dbus.TypeMethodReply, Headers: h, Body: body}
}

func errorMessage(replySerial uint32, name, text string) *dbus.Message {
	return &dbus.Message{Type: dbus.TypeError, Headers: map[dbus.HeaderField]dbus.Variant{
		dbus.FieldReplySerial: dbus.MakeVariant(replySerial),
		dbus.FieldErrorName:   dbus.MakeVariant(name),
		dbus.FieldSignature:   dbus.MakeVariant(dbus.SignatureOf(text)),
	}, Body: []any{text}}
}

func signal() *dbus.Message {
	return &dbus.Message{Type: dbus.TypeSignal, Headers: map[dbus.HeaderField]dbus.Variant{
		dbus.FieldPath:      dbus.MakeVariant(dbus.ObjectPath("/org/freedesktop/DBus")),
		dbus.FieldInterface: dbus.MakeVariant("org.freedesktop.DBus"),
		dbus.FieldMember:    dbus.MakeVariant("NameAcquired"),
		dbus.FieldSignature: dbus.MakeVariant(dbus.SignatureOf(":1.42")),
	}, Body: []any{":1.42"}}
}

func reading(b []byte) *conn { return &conn{r: bufio.NewReader(bytes.NewReader(b))} }

// TestReplies: replies in either byte order, after a signal and out of
// order, are matched to their calls; an error reply among them is a
// *BusError once all are read.
func TestReplies(t *testing.T) {
	for _, o := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
		var in []byte
		in = append(in, encode(t, signal(), o)...)
		in = append(in, encode(t, replyMessage(3, dbus.MakeVariant("/lib/systemd/system/web.service")), o)...)
		in = append(in, encode(t, replyMessage(2, dbus.MakeVariant("web.service")), o)...)
		c := reading(in)
		r, err := c.awaitAll(2, 3)
		if err != nil {
			t.Fatalf("%v: %v", o, err)
		}
		id, err1 := stringVariant(r[0])
		path, err2 := stringVariant(r[1])
		if id != "web.service" || path != "/lib/systemd/system/web.service" || err1 != nil || err2 != nil {
			t.Fatalf("%v: %q %q %v %v", o, id, path, err1, err2)
		}

		in = append(encode(t, errorMessage(5, "org.freedesktop.systemd1.NoUnitForPID", "PID 1 does not belong to any loaded unit."), o),
			encode(t, replyMessage(6, dbus.ObjectPath("/org/freedesktop/systemd1/unit/a")), o)...)
		in = append(in, encode(t, replyMessage(7, dbus.ObjectPath("/x")), o)...)
		c = reading(in)
		_, err = c.awaitAll(5, 6)
		var be *BusError
		if !errors.As(err, &be) || be.Name != "org.freedesktop.systemd1.NoUnitForPID" || be.Message != "PID 1 does not belong to any loaded unit." {
			t.Fatalf("%v: err %v", o, err)
		}
		// Both replies were read: the next one is 7's.
		if r, err := c.await(7); err != nil || r.sig != "o" {
			t.Fatalf("%v: after the error: %+v, %v", o, r, err)
		}
	}
}

// TestSend: what send writes is a valid method call (godbus decodes it),
// with its arguments.
func TestSend(t *testing.T) {
	var w bytes.Buffer
	c := &conn{c: writeConn{w: &w}, serial: 41}
	s, err := c.send(methodCall{dest: systemdName, path: "/org/freedesktop/systemd1/unit/web_2eservice", iface: propsInterface, member: "Get", args: []any{unitInterface, "Id"}})
	if err != nil || s != 42 {
		t.Fatal(s, err)
	}
	if _, err := c.send(methodCall{dest: systemdName, path: managerPath, iface: managerInterface, member: "GetUnitByPID", args: []any{uint32(1234)}}); err != nil {
		t.Fatal(err)
	}
	m, err := dbus.DecodeMessage(&w)
	if err != nil {
		t.Fatal(err)
	}
	if m.Serial() != 42 || m.Headers[dbus.FieldMember].Value() != "Get" || len(m.Body) != 2 || m.Body[0] != unitInterface || m.Body[1] != "Id" {
		t.Fatalf("%v", m)
	}
	m, err = dbus.DecodeMessage(&w)
	if err != nil {
		t.Fatal(err)
	}
	if m.Headers[dbus.FieldDestination].Value() != systemdName || len(m.Body) != 1 || m.Body[0] != uint32(1234) {
		t.Fatalf("%v", m)
	}
}

// writeConn is a net.Conn that can only be written to.
type writeConn struct {
	net.Conn
	w *bytes.Buffer
}

func (c writeConn) Write(b []byte) (int, error) { return c.w.Write(b) }

// TestBadMessages: malformed input is an error, not a panic or a huge
// allocation.
func TestBadMessages(t *testing.T) {
	good := encode(t, replyMessage(2, dbus.MakeVariant("web.service")), binary.LittleEndian)
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"endianness":  {append([]byte{'x'}, good[1:]...), "endianness byte 0x78"},
		"version":     {append(append([]byte{}, good[:3]...), append([]byte{2}, good[4:]...)...), "protocol version 2"},
		"huge body":   {append(append([]byte{}, good[:4]...), append([]byte{0xff, 0xff, 0xff, 0x7f}, good[8:]...)...), "too large"},
		"truncated":   {good[:len(good)-3], "unexpected EOF"},
		"bad variant": {encode(t, replyMessage(2, uint32(5)), binary.LittleEndian), `not a variant`},
		// A header field (5, reply serial) of an unknown type "z".
		"bad field":    {[]byte{'l', 2, 0, 1, 0, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0, 5, 1, 'z', 0, 0, 0, 0, 0}, `D-Bus header field 5: D-Bus signature "z" not understood`},
		"not a string": {encode(t, replyMessage(2, dbus.MakeVariant(uint64(5))), binary.LittleEndian), `of type "t", not a string`},
	} {
		c := reading(tc.in)
		r, err := c.await(2)
		if err == nil {
			_, err = stringVariant(r)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", name, err, tc.want)
		}
	}
}

// FuzzReadMessage: no input makes reading a message (and its value)
// panic.
func FuzzReadMessage(f *testing.F) {
	f.Add(encode(f, replyMessage(2, dbus.MakeVariant("web.service")), binary.LittleEndian))
	f.Add(encode(f, replyMessage(2, dbus.ObjectPath("/a")), binary.BigEndian))
	f.Add(encode(f, errorMessage(2, "a.b", "no"), binary.BigEndian))
	f.Add(encode(f, signal(), binary.LittleEndian))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := reading(b)
		for range 3 {
			h, body, order, err := c.readMessage()
			if err != nil {
				return
			}
			r := reply{sig: h.signature, body: body, order: order}
			_, _ = stringVariant(r)
			d := decoder{b: body, order: order}
			if h.signature != "" {
				_ = d.skip(h.signature, 0)
			}
		}
	})
}

// TestSocketOf: the unix socket of a D-Bus server address.
func TestSocketOf(t *testing.T) {
	for in, want := range map[string]string{
		"unix:path=/run/dbus/system_bus_socket":              "/run/dbus/system_bus_socket",
		"unix:path=/tmp/a%20b,guid=0123":                     "/tmp/a b",
		"tcp:host=x,port=1;unix:abstract=/tmp/dbus-x,guid=1": "@/tmp/dbus-x",
		"tcp:host=x,port=1":                                  "",
		"unix:path=%zz":                                      "",
	} {
		got, err := socketOf(in)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("%s: %q, %v; want %q", in, got, err, want)
		}
	}
}
