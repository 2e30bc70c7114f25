package deploy_test

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// linkRE is a Markdown link or image, [text](target) or ![alt](target),
// with an optional "title" after the target.
var linkRE = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// codeSpanRE is an inline code span: text in it is no link.
var codeSpanRE = regexp.MustCompile("`[^`]*`")

// Every relative link in README.md and docs/*.md points at a file of the
// repository, and every #anchor at a heading of the page it names: the
// pages link to each other, and a moved section must not leave a link
// that goes nowhere.
func TestDocLinksResolve(t *testing.T) {
	root := repoRoot(t)
	anchors := map[string]map[string]bool{} // file -> heading anchors
	anchorsOf := func(file string) map[string]bool {
		if a, ok := anchors[file]; ok {
			return a
		}
		a := headingAnchors(string(readRepoFile(t, file)))
		anchors[file] = a
		return a
	}
	for _, file := range docFiles(t) {
		text := prose(string(readRepoFile(t, file)))
		for _, m := range linkRE.FindAllStringSubmatchIndex(text, -1) {
			target := text[m[2]:m[3]]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			where := file + ":" + strconv.Itoa(1+strings.Count(text[:m[0]], "\n"))
			ref, anchor, _ := strings.Cut(target, "#")
			linked := file
			if ref != "" {
				linked = path.Clean(path.Join(path.Dir(file), ref))
				if strings.HasPrefix(linked, "../") || linked == ".." {
					t.Errorf("%s: %s leaves the repository", where, target)
					continue
				}
				if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(linked))); err != nil {
					t.Errorf("%s: %s: no such file", where, target)
					continue
				}
			}
			if anchor == "" {
				continue
			}
			if !strings.HasSuffix(linked, ".md") {
				t.Errorf("%s: %s: an anchor into a file that is not Markdown", where, target)
				continue
			}
			if !anchorsOf(linked)[anchor] {
				t.Errorf("%s: %s: %s has no heading with anchor #%s", where, target, linked, anchor)
			}
		}
	}
}

// prose blanks what is no link in a Markdown file, keeping every line where
// it was: fenced blocks and inline code spans. A link's text may run over
// a line break; its target may not.
func prose(text string) string {
	lines := strings.Split(text, "\n")
	fenced := false
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			lines[i] = ""
			continue
		}
		if fenced {
			lines[i] = ""
			continue
		}
		lines[i] = codeSpanRE.ReplaceAllStringFunc(l, func(c string) string { return strings.Repeat(" ", len(c)) })
	}
	return strings.Join(lines, "\n")
}

// headingAnchors returns the anchors GitHub gives a Markdown file's
// headings: lower case, punctuation dropped, spaces turned into hyphens,
// and -1, -2, ... after a repeated one. Headings in fenced blocks (a shell
// comment) are none.
func headingAnchors(text string) map[string]bool {
	out := map[string]bool{}
	fenced := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimLeft(line, "#")
		if !strings.HasPrefix(title, " ") {
			continue
		}
		slug := slugify(strings.TrimSpace(title))
		a := slug
		for n := 1; out[a]; n++ {
			a = slug + "-" + strconv.Itoa(n)
		}
		out[a] = true
	}
	return out
}

func slugify(title string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(title) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func TestHeadingAnchors(t *testing.T) {
	got := headingAnchors("# Title\n## The one-node Kubernetes suite (`make k8s-e2e`)\n```sh\n# not a heading\n```\n## Logs and state\n### Logs and state\n#not-a-heading\n")
	for _, want := range []string{"title", "the-one-node-kubernetes-suite-make-k8s-e2e", "logs-and-state", "logs-and-state-1"} {
		if !got[want] {
			t.Errorf("no anchor %q in %v", want, got)
		}
	}
	if got["not-a-heading"] || len(got) != 4 {
		t.Errorf("anchors %v, want exactly 4", got)
	}
}
