//go:build race

package peercred

const raceEnabled = true
