package main

import (
	"bufio"
	"cmp"
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tollgate/tollgate"
	"github.com/tollgate/tollgate/proxy/upstreamtest"
)

// The deployment examples live beside the module root; these tests keep them
// honest without docker or a cluster: every setting they name must be one
// serve reads, parse under the strict config, and the probes, ports and
// grace periods must agree with what serve does.
const deployDir = "../../deploy"

var (
	envInUsage = regexp.MustCompile(`\((TOLLGATE_[A-Z0-9_]+)\)$`)
	envName    = regexp.MustCompile(`TOLLGATE_[A-Z0-9_]+`)
)

// serveFlags is serve's flag set, bound as serve binds it.
func serveFlags() (*options, *flag.FlagSet) {
	o := &options{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.bindServe(fs)
	return o, fs
}

// knownVariables are the TOLLGATE_* variables cmd/tollgate reads: those
// registered with a flag, and those read with os.Getenv or os.LookupEnv (the
// secrets, which have no flag).
func knownVariables(t *testing.T) map[string]bool {
	t.Helper()
	known := map[string]bool{}
	_, fs := serveFlags()
	fs.VisitAll(func(f *flag.Flag) {
		if m := envInUsage.FindStringSubmatch(f.Usage); m != nil {
			known[m[1]] = true
		}
	})
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "Getenv" && sel.Sel.Name != "LookupEnv") {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "os" {
				return true
			}
			if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && strings.HasPrefix(s, "TOLLGATE_") {
					known[s] = true
				}
			}
			return true
		})
	}
	// Guard the guard: if the discovery above broke, every name would look
	// unknown for the wrong reason, or none would be checked.
	for _, v := range []string{"TOLLGATE_ADDR", "TOLLGATE_SPOOL", "TOLLGATE_MASTER_KEY"} {
		if !known[v] {
			t.Fatalf("the variables serve reads do not include %s: found %v", v, known)
		}
	}
	return known
}

// deployTexts returns every file under deploy/ and the Dockerfile, by path.
func deployTexts(t *testing.T) map[string]string {
	t.Helper()
	texts := map[string]string{}
	err := filepath.WalkDir(deployDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasPrefix(filepath.ToSlash(path), deployDir+"/secrets/") {
			return nil // an operator's own secrets, if made here
		}
		b, err := os.ReadFile(path)
		texts[path] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	texts["../../Dockerfile"] = string(b)
	return texts
}

// yamlDocs decodes every document of a YAML file.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var docs []map[string]any
	dec := yaml.NewDecoder(f)
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if err == io.EOF {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
}

// dig walks a decoded YAML tree by map keys and list indexes.
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			l, _ := v.([]any)
			if k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func digString(v any, path ...any) string { s, _ := dig(v, path...).(string); return s }
func digInt(v any, path ...any) int       { n, _ := dig(v, path...).(int); return n }

// port returns the port of a listen address such as ":8787".
func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return n
}

// serveDefault is a serve flag's default value.
func serveDefault(name string) string {
	_, fs := serveFlags()
	return fs.Lookup(name).DefValue
}

// settingsAccepted checks env as serve's strict config would see it: every
// value parses, and no secret is given twice.
func settingsAccepted(t *testing.T, where string, env map[string]string, known map[string]bool) {
	t.Helper()
	for v := range known {
		unsetenv(t, v)
	}
	for k, v := range env {
		if strings.HasPrefix(k, "TOLLGATE_") {
			t.Setenv(k, v)
		}
	}
	o, fs := serveFlags()
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := o.check(); err != nil {
		t.Errorf("%s: serve refuses these settings: %v", where, err)
	}
}

// shutdownBound is the longest a replica takes from SIGTERM to exit with
// grace as TOLLGATE_SHUTDOWN_GRACE: streams, then cancelling, then the
// usage flush.
func shutdownBound(t *testing.T, env map[string]string) time.Duration {
	t.Helper()
	grace := cmp.Or(env["TOLLGATE_SHUTDOWN_GRACE"], serveDefault("shutdown-grace"))
	d, err := parseDuration(grace)
	if err != nil {
		t.Fatalf("TOLLGATE_SHUTDOWN_GRACE=%q: %v", grace, err)
	}
	return d + shutdownCancelBound + flushBound
}

// TestDeployVariablesAreKnown: every TOLLGATE_* name in deploy/ and the
// Dockerfile is one serve reads, so renaming a variable fails here.
func TestDeployVariablesAreKnown(t *testing.T) {
	known := knownVariables(t)
	for path, text := range deployTexts(t) {
		if filepath.Base(path) == "configmap.yaml" {
			continue // harnesses.yaml, naming what workspaces export (TOLLGATE_TOKEN); TestDeployKubernetes checks it
		}
		for i, line := range strings.Split(text, "\n") {
			for _, v := range envName.FindAllString(line, -1) {
				if !known[v] {
					t.Errorf("%s:%d: %s is not a variable tollgate serve reads", path, i+1, v)
				}
			}
		}
	}
}

// TestDeployYAMLParses: every YAML file in deploy/ decodes.
func TestDeployYAMLParses(t *testing.T) {
	n := 0
	for path := range deployTexts(t) {
		if strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml") {
			if len(yamlDocs(t, path)) == 0 {
				t.Errorf("%s: no YAML document", path)
			}
			n++
		}
	}
	if n < 8 {
		t.Errorf("%d YAML files under deploy/, want the compose file and the Kubernetes manifests", n)
	}
}

// k8sPod is one workload's pod template and its tollgate container.
type k8sPod struct {
	path      string
	template  map[string]any
	container any
	env       map[string]string
}

func k8sWorkload(t *testing.T, file, kind string) k8sPod {
	t.Helper()
	path := filepath.Join(deployDir, "kubernetes", file)
	docs := yamlDocs(t, path)
	if len(docs) != 1 || docs[0]["kind"] != kind {
		t.Fatalf("%s: want one %s", path, kind)
	}
	tmpl, _ := dig(docs[0], "spec", "template").(map[string]any)
	p := k8sPod{path: path, template: tmpl, container: dig(tmpl, "spec", "containers", 0), env: map[string]string{}}
	if digString(p.container, "name") != "tollgate" {
		t.Fatalf("%s: the first container is not tollgate", path)
	}
	for _, e := range dig(p.container, "env").([]any) {
		if v, ok := dig(e, "value").(string); ok {
			p.env[digString(e, "name")] = v
		} else {
			t.Errorf("%s: %s has no literal value", path, digString(e, "name"))
		}
	}
	return p
}

// containerPort maps a probe's port (a name or a number) to its number.
func (p k8sPod) containerPort(t *testing.T, ref any) int {
	t.Helper()
	for _, cp := range dig(p.container, "ports").([]any) {
		if dig(cp, "name") == ref || dig(cp, "containerPort") == ref {
			return digInt(cp, "containerPort")
		}
	}
	t.Fatalf("%s: no container port %v", p.path, ref)
	return 0
}

// mountFor is the volume mounted at or above path in the container.
func (p k8sPod) mountFor(path string) (volume string, readOnly bool) {
	best := ""
	for _, m := range dig(p.container, "volumeMounts").([]any) {
		mp := digString(m, "mountPath")
		if (path == mp || strings.HasPrefix(path, mp+"/")) && len(mp) > len(best) {
			best, volume = mp, digString(m, "name")
			readOnly, _ = dig(m, "readOnly").(bool)
		}
	}
	return volume, readOnly
}

// volume is the pod's volume of that name, or nil.
func (p k8sPod) volume(name string) any {
	vols, _ := dig(p.template, "spec", "volumes").([]any)
	for _, v := range vols {
		if digString(v, "name") == name {
			return v
		}
	}
	return nil
}

// volumeKind says which source the pod's volume has: secret, configMap,
// emptyDir, or "" (none: a claim from the StatefulSet's templates).
func (p k8sPod) volumeKind(name string) string {
	for _, kind := range []string{"secret", "configMap", "emptyDir", "persistentVolumeClaim"} {
		if dig(p.volume(name), kind) != nil {
			return kind
		}
	}
	return ""
}

// TestDeployKubernetes: the StatefulSet and Deployment run the pods the
// issue asks for, and agree with serve's defaults and shutdown.
func TestDeployKubernetes(t *testing.T) {
	known := knownVariables(t)
	sts := k8sWorkload(t, "statefulset.yaml", "StatefulSet")
	dep := k8sWorkload(t, "deployment.yaml", "Deployment")
	for _, p := range []k8sPod{sts, dep} {
		settingsAccepted(t, p.path, p.env, known)
		c := p.container
		if got := digString(c, "readinessProbe", "httpGet", "path"); got != "/readyz" {
			t.Errorf("%s: readiness probe %q, want /readyz", p.path, got)
		}
		if digInt(c, "readinessProbe", "periodSeconds") != 2 || digInt(c, "readinessProbe", "failureThreshold") != 2 {
			t.Errorf("%s: readiness probe every %v s, out after %v failures; want 2 and 2", p.path,
				dig(c, "readinessProbe", "periodSeconds"), dig(c, "readinessProbe", "failureThreshold"))
		}
		for _, probe := range []string{"livenessProbe", "startupProbe"} {
			if got := digString(c, probe, "httpGet", "path"); got != "/healthz" {
				t.Errorf("%s: %s %q, want /healthz: it must not depend on the database", p.path, probe, got)
			}
		}
		proxyPort := port(t, p.env["TOLLGATE_ADDR"])
		for _, probe := range []string{"readinessProbe", "livenessProbe", "startupProbe"} {
			if got := p.containerPort(t, dig(c, probe, "httpGet", "port")); got != proxyPort {
				t.Errorf("%s: %s on port %d; TOLLGATE_ADDR listens on %d", p.path, probe, got, proxyPort)
			}
		}
		if got, want := p.containerPort(t, "admin"), port(t, cmp.Or(p.env["TOLLGATE_ADMIN_ADDR"], serveDefault("admin-addr"))); got != want {
			t.Errorf("%s: admin container port %d; the admin listener is on %d", p.path, got, want)
		}
		if !strings.HasPrefix(p.env["TOLLGATE_ADMIN_ADDR"], ":") {
			t.Errorf("%s: TOLLGATE_ADMIN_ADDR=%q: the pod's loopback is unreachable from the admin Service", p.path, p.env["TOLLGATE_ADMIN_ADDR"])
		}
		if dig(c, "securityContext", "readOnlyRootFilesystem") != true || dig(c, "securityContext", "allowPrivilegeEscalation") != false {
			t.Errorf("%s: container securityContext %v, want a read-only root and no privilege escalation", p.path, dig(c, "securityContext"))
		}
		if dig(p.template, "spec", "securityContext", "runAsNonRoot") != true || digInt(p.template, "spec", "securityContext", "runAsUser") == 0 {
			t.Errorf("%s: pod securityContext %v, want a non-root user", p.path, dig(p.template, "spec", "securityContext"))
		}
		if dig(c, "resources", "requests", "cpu") == nil || dig(c, "resources", "limits", "memory") == nil {
			t.Errorf("%s: resources %v, want cpu requests and a memory limit", p.path, dig(c, "resources"))
		}
		// Service links would add <SERVICE>_PORT and the like beside the settings.
		if dig(p.template, "spec", "enableServiceLinks") != false {
			t.Errorf("%s: enableServiceLinks is not false", p.path)
		}
		stop := shutdownBound(t, p.env) + time.Duration(digInt(c, "lifecycle", "preStop", "sleep", "seconds"))*time.Second
		if grace := time.Duration(digInt(p.template, "spec", "terminationGracePeriodSeconds")) * time.Second; grace <= stop {
			t.Errorf("%s: terminationGracePeriodSeconds %v; shutdown may take %v, and the kubelet kills at the limit", p.path, grace, stop)
		}
		if _, ok := p.env["TOLLGATE_MASTER_KEY"]; ok {
			t.Errorf("%s: the master key is inline; mount it from the Secret with TOLLGATE_MASTER_KEY_FILE", p.path)
		}
		for _, v := range []string{"TOLLGATE_MASTER_KEY_FILE", "TOLLGATE_ADMIN_TOKEN_FILE", "TOLLGATE_METRICS_TOKEN_FILE"} {
			if vol, _ := p.mountFor(p.env[v]); p.volumeKind(vol) != "secret" {
				t.Errorf("%s: %s=%q is not on a Secret volume", p.path, v, p.env[v])
			}
		}
		if vol, _ := p.mountFor(p.env["TOLLGATE_HARNESSES"]); p.volumeKind(vol) != "configMap" {
			t.Errorf("%s: TOLLGATE_HARNESSES=%q is not on the ConfigMap volume", p.path, p.env["TOLLGATE_HARNESSES"])
		}
		if vol, ro := p.mountFor(p.env["TOLLGATE_SPOOL"]); vol != "spool" || ro {
			t.Errorf("%s: TOLLGATE_SPOOL=%q is on volume %q (read-only %v), want the writable spool volume", p.path, p.env["TOLLGATE_SPOOL"], vol, ro)
		}
	}
	if sts.volumeKind("spool") != "" || digString(yamlDocs(t, sts.path)[0], "spec", "volumeClaimTemplates", 0, "metadata", "name") != "spool" {
		t.Errorf("%s: the spool is not a volume claim template", sts.path)
	}
	if dep.volumeKind("spool") != "emptyDir" {
		t.Errorf("%s: the spool is not an emptyDir", dep.path)
	}
	// The two variants differ only in where the spool lives.
	strip := func(tmpl map[string]any) any {
		spec := maps.Clone(dig(tmpl, "spec").(map[string]any))
		spec["volumes"] = slices.DeleteFunc(slices.Clone(spec["volumes"].([]any)), func(v any) bool { return digString(v, "name") == "spool" })
		return map[string]any{"metadata": tmpl["metadata"], "spec": spec}
	}
	if !reflect.DeepEqual(strip(sts.template), strip(dep.template)) {
		t.Errorf("the pod templates of %s and %s differ beyond the spool volume: keep them in step", sts.path, dep.path)
	}

	labels := dig(sts.template, "metadata", "labels").(map[string]any)
	selects := func(sel any) bool {
		m, _ := sel.(map[string]any)
		for k, v := range m {
			if labels[k] != v {
				return false
			}
		}
		return len(m) > 0
	}
	for _, d := range yamlDocs(t, filepath.Join(deployDir, "kubernetes", "service.yaml")) {
		if !selects(dig(d, "spec", "selector")) {
			t.Errorf("service %s selects no tollgate pod", digString(d, "metadata", "name"))
		}
		for _, p := range dig(d, "spec", "ports").([]any) {
			sts.containerPort(t, dig(p, "targetPort"))
		}
	}
	pdb := yamlDocs(t, filepath.Join(deployDir, "kubernetes", "pdb.yaml"))[0]
	if pdb["kind"] != "PodDisruptionBudget" || !selects(dig(pdb, "spec", "selector", "matchLabels")) {
		t.Errorf("pdb.yaml: %v does not select the tollgate pods", dig(pdb, "spec", "selector"))
	}
	secret := yamlDocs(t, filepath.Join(deployDir, "kubernetes", "secret.example.yaml"))[0]
	keyVolume, _ := sts.mountFor(sts.env["TOLLGATE_MASTER_KEY_FILE"])
	secretName := digString(sts.volume(keyVolume), "secret", "secretName")
	if secret["kind"] != "Secret" || digString(secret, "metadata", "name") != secretName {
		t.Errorf("secret.example.yaml is not the Secret %q the pods mount", secretName)
	}
	for _, v := range []string{"TOLLGATE_MASTER_KEY_FILE", "TOLLGATE_ADMIN_TOKEN_FILE", "TOLLGATE_METRICS_TOKEN_FILE"} {
		if key := filepath.Base(sts.env[v]); dig(secret, "stringData", key) == nil {
			t.Errorf("secret.example.yaml has no %s for %s", key, v)
		}
	}
	cm := yamlDocs(t, filepath.Join(deployDir, "kubernetes", "configmap.yaml"))[0]
	if got := digString(cm, "data", filepath.Base(sts.env["TOLLGATE_HARNESSES"])); got != string(tollgate.DefaultHarnesses) {
		t.Errorf("configmap.yaml's harnesses.yaml is not the repository's harnesses.yaml: copy it in (indented 4 spaces)")
	}
}

var composeDefault = regexp.MustCompile(`\$\{[A-Za-z0-9_]+:-([^}]*)\}`)

// TestDeployCompose: three replicas, each with its own spool, secrets from
// files, HAProxy checking /readyz on the ports they listen on.
func TestDeployCompose(t *testing.T) {
	known := knownVariables(t)
	path := filepath.Join(deployDir, "docker-compose.yaml")
	compose := yamlDocs(t, path)[0]
	services := dig(compose, "services").(map[string]any)
	var replicas []string
	spools := map[string]string{}
	var proxyPort, adminPort int
	for name, svc := range services {
		if !strings.Contains(digString(svc, "image"), "tollgate") {
			continue
		}
		replicas = append(replicas, name)
		env := map[string]string{}
		for k, v := range dig(svc, "environment").(map[string]any) {
			s, ok := v.(string)
			if !ok {
				t.Errorf("%s: %s.environment.%s is %T: quote it, compose wants strings", path, name, k, v)
			}
			env[k] = composeDefault.ReplaceAllString(s, "$1")
		}
		settingsAccepted(t, path+" "+name, env, known)
		proxyPort, adminPort = port(t, env["TOLLGATE_ADDR"]), port(t, env["TOLLGATE_ADMIN_ADDR"])
		if _, ok := env["TOLLGATE_MASTER_KEY"]; ok {
			t.Errorf("%s: %s has the master key inline; use a secret and TOLLGATE_MASTER_KEY_FILE", path, name)
		}
		secrets, _ := dig(svc, "secrets").([]any)
		for _, v := range []string{"TOLLGATE_MASTER_KEY_FILE", "TOLLGATE_ADMIN_TOKEN_FILE", "TOLLGATE_METRICS_TOKEN_FILE"} {
			s := strings.TrimPrefix(env[v], "/run/secrets/")
			if !slices.Contains(secrets, any(s)) || dig(compose, "secrets", s, "file") == nil {
				t.Errorf("%s: %s's %s=%q is not one of its secrets", path, name, v, env[v])
			}
		}
		for _, vol := range dig(svc, "volumes").([]any) {
			src, dst, _ := strings.Cut(vol.(string), ":")
			if dst == filepath.Dir(env["TOLLGATE_SPOOL"]) || dst == env["TOLLGATE_SPOOL"] {
				if other, ok := spools[src]; ok {
					t.Errorf("%s: %s and %s share the spool volume %s", path, name, other, src)
				}
				spools[src] = name
			}
		}
		if d, err := time.ParseDuration(digString(svc, "stop_grace_period")); err != nil || d <= shutdownBound(t, env) {
			t.Errorf("%s: %s's stop_grace_period %q; shutdown may take %v", path, name, digString(svc, "stop_grace_period"), shutdownBound(t, env))
		}
		if dig(svc, "read_only") != true {
			t.Errorf("%s: %s's root filesystem is writable", path, name)
		}
	}
	slices.Sort(replicas)
	if len(replicas) != 3 || len(spools) != 3 {
		t.Fatalf("%s: replicas %v with spool volumes %v, want 3, each its own", path, replicas, spools)
	}

	// haproxy.cfg: each backend checks /readyz and lists every replica on
	// the port it listens on.
	f, err := os.Open(filepath.Join(deployDir, "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	backends := map[string][]string{}
	checks := map[string]string{}
	var backend string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) == 0 || strings.HasPrefix(fields[0], "#"):
		case fields[0] == "backend" && len(fields) > 1:
			backend = fields[1]
		case fields[0] == "frontend" || fields[0] == "defaults" || fields[0] == "global" || fields[0] == "resolvers":
			backend = ""
		case backend != "" && fields[0] == "server" && len(fields) > 2:
			backends[backend] = append(backends[backend], fields[2])
		case backend != "" && len(fields) >= 4 && fields[0] == "option" && fields[1] == "httpchk":
			checks[backend] = fields[3]
		}
	}
	for name, want := range map[string]int{"tollgate": proxyPort, "tollgate-admin": adminPort} {
		var servers []string
		for _, r := range replicas {
			servers = append(servers, r+":"+strconv.Itoa(want))
		}
		if got := slices.Sorted(slices.Values(backends[name])); !slices.Equal(got, servers) {
			t.Errorf("haproxy.cfg backend %s: servers %v, want %v", name, got, servers)
		}
		if checks[name] != "/readyz" {
			t.Errorf("haproxy.cfg backend %s: health check %q, want /readyz", name, checks[name])
		}
	}
}

// TestDeployDockerfile: FROM scratch only, a numeric non-root user, the
// data under the volume, the ports the listeners use exposed, and nothing
// copied that .dockerignore keeps out of the context.
func TestDeployDockerfile(t *testing.T) {
	known := knownVariables(t)
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	ignore, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var included []string
	for _, l := range strings.Split(string(ignore), "\n") {
		if s, ok := strings.CutPrefix(strings.TrimSpace(l), "!"); ok {
			included = append(included, strings.TrimSuffix(s, "/"))
		}
	}
	env := map[string]string{}
	var user, volume string
	var expose []string
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	for _, l := range strings.Split(text, "\n") {
		fields := strings.Fields(l)
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			if fields[1] != "scratch" {
				t.Errorf("Dockerfile: FROM %s: the image must build offline, from scratch", fields[1])
			}
		case "ENV":
			for _, kv := range fields[1:] {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
		case "USER":
			user = fields[1]
		case "VOLUME":
			volume = strings.Trim(fields[1], `["]`)
		case "EXPOSE":
			expose = append(expose, fields[1:]...)
		case "COPY":
			src := fields[len(fields)-2]
			if !slices.ContainsFunc(included, func(p string) bool { return src == p || strings.HasPrefix(src, p+"/") }) {
				t.Errorf("Dockerfile: COPY %s, which .dockerignore leaves out of the context", src)
			}
		}
	}
	settingsAccepted(t, "Dockerfile", env, known)
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("Dockerfile: USER %q, want a numeric non-root uid (runAsNonRoot cannot check a name)", user)
	}
	for _, v := range []string{"TOLLGATE_DB", "TOLLGATE_SPOOL"} {
		if !strings.HasPrefix(env[v], volume+"/") {
			t.Errorf("Dockerfile: %s=%q is not on the volume %q", v, env[v], volume)
		}
	}
	for _, addr := range []string{cmp.Or(env["TOLLGATE_ADDR"], serveDefault("addr")), cmp.Or(env["TOLLGATE_ADMIN_ADDR"], serveDefault("admin-addr"))} {
		if p := strconv.Itoa(port(t, addr)); !slices.Contains(expose, p) {
			t.Errorf("Dockerfile: EXPOSE %v lacks %s, the port of %s", expose, p, addr)
		}
	}
	if h, _, _ := net.SplitHostPort(env["TOLLGATE_ADDR"]); h == "127.0.0.1" || h == "localhost" || env["TOLLGATE_ADDR"] == "" {
		t.Errorf("Dockerfile: TOLLGATE_ADDR=%q: the container's loopback is unreachable from outside", env["TOLLGATE_ADDR"])
	}
}

// TestDeployProbePathsAnswer: the paths the manifests probe answer 200 on
// the listener each probe's port belongs to, from a real serve.
func TestDeployProbePathsAnswer(t *testing.T) {
	sts := k8sWorkload(t, "statefulset.yaml", "StatefulSet")
	proxyPort := port(t, sts.env["TOLLGATE_ADDR"])
	probes := map[string]bool{} // path -> on the proxy port
	for _, probe := range []string{"readinessProbe", "livenessProbe", "startupProbe"} {
		probes[digString(sts.container, probe, "httpGet", "path")] = sts.containerPort(t, dig(sts.container, probe, "httpGet", "port")) == proxyPort
	}
	_, fakeURL := upstreamtest.MustStart(t, upstreamtest.Config{})
	s := startServe(t, newCLI(t, fakeURL))
	base := s.line(t, "listening on ")
	admin := s.line(t, "admin API and metrics on ")
	go io.Copy(io.Discard, s.out)
	// HAProxy checks /readyz on both listeners (TestDeployCompose).
	for _, u := range []string{base + "/readyz", admin + "/readyz"} {
		if code, body := getStatus(t, u, ""); code != 200 {
			t.Errorf("GET %s: %d %s", u, code, body)
		}
	}
	for path, onProxy := range probes {
		u := admin + path
		if onProxy {
			u = base + path
		}
		if code, body := getStatus(t, u, ""); code != 200 {
			t.Errorf("probe GET %s: %d %s", u, code, body)
		}
	}
}
