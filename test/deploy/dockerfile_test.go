package deploy_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// No container engine runs on these machines, so the Dockerfile is checked by
// reading it: what it copies exists, the build context lets it through, the
// build covers every package the binary needs, and the image's paths are the
// ones install-plugin and the DaemonSet use.

type instruction struct {
	cmd  string // upper case
	args string
}

func dockerfile(t *testing.T) []instruction {
	t.Helper()
	var out []instruction
	var cur string
	for line := range strings.Lines(string(readRepoFile(t, "Dockerfile"))) {
		line = strings.TrimRight(line, "\r\n")
		if cur == "" && (strings.HasPrefix(strings.TrimSpace(line), "#") || strings.TrimSpace(line) == "") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		cur += line
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur = ""
	}
	return out
}

// copies returns the COPY instructions from the build context (not --from).
func contextCopies(t *testing.T) [][]string {
	var out [][]string
	for _, in := range dockerfile(t) {
		if in.cmd != "COPY" || strings.Contains(in.args, "--from=") {
			continue
		}
		out = append(out, strings.Fields(in.args))
	}
	return out
}

func dockerfileEntrypoint(t *testing.T) string {
	t.Helper()
	for _, in := range dockerfile(t) {
		if in.cmd == "ENTRYPOINT" {
			var argv []string
			if err := json.Unmarshal([]byte(in.args), &argv); err != nil || len(argv) != 1 {
				t.Fatalf("ENTRYPOINT %s: want the exec form with one element", in.args)
			}
			return argv[0]
		}
	}
	t.Fatal("Dockerfile has no ENTRYPOINT")
	return ""
}

func TestDockerfileCopiesFilesThatExist(t *testing.T) {
	root := repoRoot(t)
	copies := contextCopies(t)
	if len(copies) == 0 {
		t.Fatal("no COPY from the build context")
	}
	allowed := dockerignoreAllows(t)
	for _, c := range copies {
		for _, src := range c[:len(c)-1] {
			if _, err := os.Stat(filepath.Join(root, src)); err != nil {
				t.Errorf("COPY %s: %v", src, err)
			}
			if !allowed(src) {
				t.Errorf("COPY %s: .dockerignore keeps it out of the build context", src)
			}
		}
	}
}

func TestDockerfileBuildsStaticStampedBinary(t *testing.T) {
	builds := map[string]string{} // main package -> its go build step
	var stages []string
	hasVersionArg := false
	for _, in := range dockerfile(t) {
		switch in.cmd {
		case "FROM":
			stages = append(stages, in.args)
		case "ARG":
			if strings.HasPrefix(in.args, "VERSION") {
				hasVersionArg = true
			}
		case "RUN":
			if strings.Contains(in.args, "go build") {
				f := strings.Fields(in.args)
				builds[f[len(f)-1]] = in.args
			}
		}
	}
	if len(stages) < 2 {
		t.Errorf("want a multi-stage build, got FROM %q", stages)
	}
	if !hasVersionArg {
		t.Error("no ARG VERSION to stamp the version")
	}
	// The plugin and the node agent, from the same module and version.
	for _, cmd := range []string{"sriov-passthrough-cni", "sriov-passthrough-agent"} {
		build, ok := builds["./cmd/"+cmd]
		if !ok {
			t.Errorf("no go build step for ./cmd/%s (steps %v)", cmd, builds)
		}
		for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=${VERSION}"} {
			if !strings.Contains(build, want) {
				t.Errorf("go build step %q lacks %q", build, want)
			}
		}
		if _, err := os.Stat(filepath.Join(repoRoot(t), "cmd", cmd)); err != nil {
			t.Errorf("the build's main package: %v", err)
		}
	}
}

// Every package of this module that the binary imports must be inside what
// the build stage copies, or the image build fails where go build here works.
func TestDockerfileCopiesEveryPackageTheBinaryNeeds(t *testing.T) {
	root := repoRoot(t)
	goFiles, _ := filepath.Glob(filepath.Join(root, "cmd", "sriov-passthrough-cni", "*.go"))
	if len(goFiles) == 0 {
		t.Skip("cmd/sriov-passthrough-cni has no Go files yet")
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", "./cmd/sriov-passthrough-cni")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var copied []string
	for _, c := range contextCopies(t) {
		for _, src := range c[:len(c)-1] {
			copied = append(copied, path.Clean(src))
		}
	}
	for dir := range strings.Lines(string(out)) {
		dir = strings.TrimSpace(dir)
		if dir == "" {
			continue
		}
		rel, _ := filepath.Rel(root, dir)
		rel = filepath.ToSlash(rel)
		if !slices.ContainsFunc(copied, func(c string) bool { return c == "." || rel == c || strings.HasPrefix(rel, c+"/") }) {
			t.Errorf("package dir %s is not copied into the build stage (COPY sources %v)", rel, copied)
		}
	}
}

func TestImageLayoutMatchesInstaller(t *testing.T) {
	dest := map[string]string{} // image path -> context source
	for _, c := range contextCopies(t) {
		if len(c) == 2 {
			dest[c[1]] = c[0]
		}
	}
	var binFromBuild bool
	for _, in := range dockerfile(t) {
		if in.cmd == "COPY" && strings.Contains(in.args, "--from=") && strings.HasSuffix(in.args, " /plugin-src/"+binName) {
			binFromBuild = true
		}
	}
	if !binFromBuild {
		t.Errorf("the built binary is not copied to /plugin-src/%s, install-plugin's default source", binName)
	}
	if dest["/plugin-src/"+confName] != "plugin/"+confName {
		t.Errorf("plugin/%s is not copied to /plugin-src/%s", confName, confName)
	}
	entry := dockerfileEntrypoint(t)
	if dest[entry] != "install-plugin" {
		t.Errorf("ENTRYPOINT %s is not the copied install-plugin (copies: %v)", entry, dest)
	}
	if !strings.Contains(string(readRepoFile(t, "install-plugin")), "src=/plugin-src\n") {
		t.Error("install-plugin's default --src is no longer /plugin-src")
	}
}

// dockerignoreAllows reports whether a context path survives .dockerignore.
// It understands what this repository's file uses: a leading "*" and "!path"
// exceptions (a directory exception covers what is under it).
func dockerignoreAllows(t *testing.T) func(string) bool {
	data, err := os.ReadFile(filepath.Join(repoRoot(t), ".dockerignore"))
	if os.IsNotExist(err) {
		return func(string) bool { return true }
	}
	if err != nil {
		t.Fatal(err)
	}
	excludeAll := false
	var keep []string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case line == "*":
			excludeAll = true
		case strings.HasPrefix(line, "!"):
			keep = append(keep, strings.TrimSuffix(strings.TrimPrefix(line, "!"), "/"))
		default:
			t.Fatalf(".dockerignore pattern %q: this test only understands \"*\" and \"!path\"", line)
		}
	}
	return func(p string) bool {
		p = strings.TrimSuffix(path.Clean(p), "/")
		if !excludeAll {
			return true
		}
		return slices.ContainsFunc(keep, func(k string) bool { return p == k || strings.HasPrefix(p, k+"/") })
	}
}
