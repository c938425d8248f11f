package resolver

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func TestParseMasterKey(t *testing.T) {
	t.Parallel()
	key := bytes.Repeat([]byte{0xfb}, 32)
	for _, tc := range []struct {
		name string
		in   string
		ok   bool
	}{
		{"Hex", hex.EncodeToString(key), true},
		{"HexWithNewline", hex.EncodeToString(key) + "\n", true},
		{"Base64", base64.StdEncoding.EncodeToString(key), true},
		{"Base64Raw", base64.RawStdEncoding.EncodeToString(key), true},
		{"Base64URL", base64.URLEncoding.EncodeToString(key), true},
		{"Base64URLRaw", base64.RawURLEncoding.EncodeToString(key), true},
		{"Empty", "", false},
		{"TooShort", base64.StdEncoding.EncodeToString(key[:16]), false},
		{"TooLong", hex.EncodeToString(append(key, 1)), false},
		{"Garbage", "correct horse battery staple", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseMasterKey(tc.in)
			if tc.ok {
				if err != nil || !bytes.Equal(got, key) {
					t.Fatalf("got %x, %v", got, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidMasterKey) {
				t.Fatalf("got %v, want ErrInvalidMasterKey", err)
			}
			if tc.in != "" && strings.Contains(err.Error(), tc.in) {
				t.Fatal("error repeats the input")
			}
		})
	}
}

// The allocation-free token MAC equals crypto/hmac under the HKDF-derived
// secret, and that secret differs from the encryption key.
func TestTokenMACIsHMACSHA256(t *testing.T) {
	t.Parallel()
	k, err := newMasterKey(testKey1)
	if err != nil {
		t.Fatal(err)
	}
	secret, _ := hkdf.Key(sha256.New, testKey1, nil, labelTokenMAC, 32)
	enc, _ := hkdf.Key(sha256.New, testKey1, nil, labelEncryption, 32)
	if bytes.Equal(secret, enc) || bytes.Equal(secret, testKey1) {
		t.Fatal("token secret is not a distinct derivation")
	}
	for _, tok := range []string{TokenPrefix + strings.Repeat("A", tokenLen-len(TokenPrefix)), TokenPrefix + strings.Repeat("_-9z", 11)[:tokenLen-len(TokenPrefix)]} {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(tok))
		want := m.Sum(nil)
		got := k.mac.sum(tok)
		if !bytes.Equal(got[:], want) {
			t.Fatalf("mac(%q) = %x, want %x", tok, got, want)
		}
	}
}

func TestEncryptionRoundTrip(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		e := mustService(t, dsn)
		const plain = "sk-ant-roundtrip-0123456789abcdef"
		c := mustCred(t, e.svc, "anthropic", "  "+plain+"\n") // whitespace from a pipe is dropped
		mustBind(t, e.svc, BindingKey{Tier: TierPlatform, Dialect: "anthropic-messages"}, c.ID)
		if c.Last4 != "cdef" || c.KeyID != e.svc.keys.Load().current.id || c.Kind != KindAPIKey {
			t.Fatalf("credential %+v", c)
		}
		if strings.Contains(dumpTables(t, e.db), plain[3:]) {
			t.Fatal("plaintext stored in the database")
		}
		wantSecret(t, e.svc, ccAnthropic, plain)
		wantSecret(t, mustService(t, dsn).svc, ccAnthropic, plain)
	})
}

// A ciphertext copied onto another credential's row does not decrypt (the
// AAD names the credential): that credential is unusable, logged once
// without the secret, and the others are unaffected.
func TestCiphertextBoundToItsCredential(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn)
		a := mustCred(t, e.svc, "anthropic", "sk-ant-tenant-a-secret-000")
		b := mustCred(t, e.svc, "anthropic", "sk-ant-tenant-b-secret-000")
		mustBind(t, e.svc, BindingKey{Tier: TierUser, ScopeID: "u1", Dialect: "anthropic-messages"}, b.ID)
		mustBind(t, e.svc, BindingKey{Tier: TierPlatform, Dialect: "anthropic-messages"}, a.ID)
		if _, err := e.db.ExecContext(ctx, `UPDATE resolver_credentials SET ciphertext = (SELECT ciphertext FROM resolver_credentials WHERE id = $1) WHERE id = $2`, a.ID, b.ID); err != nil {
			t.Fatal(err)
		}
		s := mustService(t, dsn)
		for range 3 {
			s.clock.Advance(DefaultResolveCacheTTL)
			wantSecret(t, s.svc, ccAnthropic, "sk-ant-tenant-a-secret-000")
		}
		logs := s.logs.String()
		if n := strings.Count(logs, "does not decrypt"); n != 1 {
			t.Fatalf("decrypt failure logged %d times, want once:\n%s", n, logs)
		}
		if !strings.Contains(logs, b.ID) || strings.Contains(logs, "tenant-a-secret") || strings.Contains(logs, "tenant-b-secret") {
			t.Fatalf("log should name %s and no secret:\n%s", b.ID, logs)
		}
	})
}

func TestWrongMasterKeyFailsAtNew(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		e := mustService(t, dsn, withKey(testKey1))
		// No credential yet: the recorded key id still catches it.
		if _, err := newService(t, dsn, withKey(testKey2)); !errors.Is(err, ErrWrongMasterKey) {
			t.Fatalf("empty database, wrong key: got %v, want ErrWrongMasterKey", err)
		}
		mustCred(t, e.svc, "anthropic", "sk-ant-wrong-key-test-00")
		_, err := newService(t, dsn, withKey(testKey2))
		if !errors.Is(err, ErrWrongMasterKey) {
			t.Fatalf("got %v, want ErrWrongMasterKey", err)
		}
		if strings.Contains(err.Error(), hex.EncodeToString(testKey2)) || strings.Contains(err.Error(), hex.EncodeToString(testKey1)) {
			t.Fatal("error repeats a key")
		}
		// The old key as a previous key is accepted (rolling rotation).
		if _, err := newService(t, dsn, withKey(testKey2, testKey1)); err != nil {
			t.Fatalf("with the old key as previous: %v", err)
		}
		if _, err := newService(t, dsn, withKey(testKey1[:16])); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("short key: got %v", err)
		}
	})
}

func TestRotateKey(t *testing.T) {
	t.Parallel()
	forEachEngine(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		e := mustService(t, dsn, withKey(testKey1))
		secrets := map[string]string{}
		for i, p := range []string{"anthropic", "openai", "anthropic"} {
			sec := "sk-rotate-" + p + "-" + strings.Repeat("x", i+10)
			c := mustCred(t, e.svc, p, sec)
			secrets[c.ID] = sec
		}
		if err := e.svc.DisableCredential(ctx, firstKey(secrets)); err != nil {
			t.Fatal(err)
		}
		used, _ := mustToken(t, e.svc, TokenSpec{Workspace: "w1", User: "u1"})
		idle, _ := mustToken(t, e.svc, TokenSpec{Workspace: "w2", User: "u1"})

		// Rotating from a key the credentials are not under changes nothing.
		if err := e.svc.RotateKey(ctx, testKey2, bytes.Repeat([]byte{3}, 32)); !errors.Is(err, ErrWrongMasterKey) {
			t.Fatalf("rotate from the wrong key: got %v", err)
		}
		if err := e.svc.RotateKey(ctx, testKey1, testKey2); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*Service{e.svc, mustService(t, dsn, withKey(testKey2)).svc} {
			checkAllReadable(t, s, secrets)
		}
		newID := e.svc.keys.Load().current.id
		creds, _ := e.svc.ListCredentials(ctx)
		for _, c := range creds {
			if c.KeyID != newID {
				t.Fatalf("credential %s still under key %s", c.ID, c.KeyID)
			}
		}
		if _, err := newService(t, dsn, withKey(testKey1)); !errors.Is(err, ErrWrongMasterKey) {
			t.Fatalf("old key after rotation: got %v, want ErrWrongMasterKey", err)
		}
		// Tokens are stored as HMACs under the old key. The rotating process
		// still reads with it and re-hashes a token on use, so that token then
		// works with the new key alone; an unused one needs the old key as a
		// previous key.
		if _, err := e.svc.Authenticate(ctx, used); err != nil {
			t.Fatalf("token after rotation, same process: %v", err)
		}
		newOnly := mustService(t, dsn, withKey(testKey2)).svc
		if _, err := newOnly.Authenticate(ctx, used); err != nil {
			t.Fatalf("re-hashed token, new key only: %v", err)
		}
		if _, err := newOnly.Authenticate(ctx, idle); !errors.Is(err, ErrTokenInvalid) {
			t.Fatalf("unused token, new key only: got %v, want ErrTokenInvalid", err)
		}
		if _, err := mustService(t, dsn, withKey(testKey2, testKey1)).svc.Authenticate(ctx, idle); err != nil {
			t.Fatalf("unused token, old key as previous: %v", err)
		}
	})
}

func firstKey(m map[string]string) string {
	for k := range m {
		return k
	}
	return ""
}

// checkAllReadable decrypts every credential through materialise, the
// path requests take.
func checkAllReadable(t *testing.T, s *Service, secrets map[string]string) {
	t.Helper()
	rows, err := s.db.QueryContext(context.Background(), `SELECT id, provider, key_id, ciphertext FROM resolver_credentials`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		c := &candidate{credFound: true}
		if err := rows.Scan(&c.credID, &c.provider, &c.keyID, &c.ciphertext); err != nil {
			t.Fatal(err)
		}
		d := "anthropic-messages"
		if c.provider == "openai" {
			d = "openai-chat"
		}
		tg, reason, _ := s.materialiseOne(s.reg.Current(), Request{Dialect: d}, TierPlatform, c)
		if reason != "" || tg.Secret.Reveal() != secrets[c.credID] {
			t.Fatalf("credential %s: reason %q", c.credID, reason)
		}
		n++
	}
	if n != len(secrets) {
		t.Fatalf("read %d credentials, want %d", n, len(secrets))
	}
}
