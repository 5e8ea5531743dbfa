#!/usr/bin/env python3
"""Lists the pairs of pj's modules that import each other (a two-way edge is the smallest cycle).

Units are the top-level modules of src/ and, inside src/backend/, each file or folder; an edge is a
`crate::x` path (or `super::x` inside backend/) in code outside comments and test modules.
Usage: python3 tools/import_cycles.py [src]   (prints "two-way pairs: 0" when there is none)."""
import os, re, sys, itertools
root = sys.argv[1] if len(sys.argv) > 1 else 'src'
def unit(path):
    rel = os.path.relpath(path, root)[:-3]
    parts = rel.split('/')
    if parts[0] in ('lib',): return None
    if parts[0] == 'backend' and len(parts) > 1:
        name = parts[1]
        return 'backend::' + ('mod' if name == 'mod' else name)
    return parts[0]
edges = set()
for dirpath, _, files in os.walk(root):
    for f in files:
        if not f.endswith('.rs'): continue
        p = os.path.join(dirpath, f)
        u = unit(p)
        if u is None: continue
        text = open(p).read()
        text = re.split(r'#\[cfg\(test\)\]\s*mod tests', text)[0]
        text = '\n'.join(l for l in text.split('\n') if not l.strip().startswith('//'))
        for m in re.finditer(r'crate::([a-z_]+)(?:::([a-z_]+))?', text):
            top, sub = m.group(1), m.group(2)
            if top == 'backend' and sub and not sub[0].isupper():
                v = 'backend::' + sub
                if sub in ('Backend','CallLink'): v = 'backend::mod'
            elif top == 'backend':
                v = 'backend::mod'
            else:
                v = top
            if v != u and not (u.startswith('backend') and v == 'backend::mod' and u == 'backend::mod'):
                edges.add((u, v))
        # super:: inside backend files
        if u.startswith('backend::') and u != 'backend::mod':
            for m in re.finditer(r'super::([a-z_]+)', text):
                v = 'backend::' + m.group(1)
                if os.path.exists(os.path.join(root, 'backend', m.group(1) + '.rs')) or os.path.isdir(os.path.join(root,'backend',m.group(1))):
                    if v != u: edges.add((u, v))
tops = lambda e: (e[0].split('::')[0], e[1].split('::')[0])
pairs = sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges})
print("two-way pairs:", len(pairs))
for a, b in pairs: print("  ", a, "<->", b)
