"""Sort the surviving mutants of scripts/mutation.sh by kind, from their diffs
(mutants/survivors.txt: "### name" then mutmut's -/+ lines). The first two kinds cannot change
what the CPU tests see (equivalent here); the rest are listed by name with -v.

    python3 scripts/mutation_classify.py mutants/survivors.txt [-v]
"""
import re, collections, sys
text = open(sys.argv[1]).read()
blocks = text.split("### ")[1:]
order = ["device or generator argument (CPU-only tests, global RNG)", "dimension alias (-1 and 1 on 2-D tensors; a square (V, V) pair of axes; broadcasting)",
         "message or metric-name text", "distributed branch (reached by the multi-process tests only)", "other"]
cats = collections.OrderedDict((k, []) for k in order)
def norm(s):
    s = re.sub(r"dim=[+-]?1", "", s); s = s.replace(", )", ")").replace("(, ", "(").replace("( ", "(")
    s = re.sub(r"\((\s*)[+-]1\)", "()", s)
    return s.replace(" ", "")
for b in blocks:
    name, *lines = b.strip().split("\n")
    # "- code" from mutmut's diff, or "-def ..." (a changed default argument, no space)
    minus = "\n".join(l[1:].removeprefix(" ") for l in lines if l.startswith("-"))
    plus = "\n".join(l[1:].removeprefix(" ") for l in lines if l.startswith("+"))
    if re.search(r"device|generator", minus) and (re.search(r"(device|generator)\s*=\s*None", plus) or
            ("device" in minus and "device" not in plus) or ("generator=" in minus and "generator=" not in plus)
            or re.search(r"operands\[\d\]\.device", plus)):
        c = order[0]
    elif norm(minus) == norm(plus) or ("shape[1]" in minus and "shape[2]" in plus) or ("view(1, v, v, 1)" in minus and "view(v, v, 1)" in plus):
        c = order[1]
    elif "XX" in plus or (plus.lower() == minus.lower() and plus != minus) or re.search(r"raise \w+\(None\)", plus):
        c = order[2]
    elif re.search(r"distributed\.|world_size|gather_distributed|offset", minus + plus):
        c = order[3]
    else:
        c = order[4]
    cats[c].append((name, minus, plus))
for c, items in cats.items():
    print(f"{len(items):4d}  {c}")
if "-v" in sys.argv:
    for name, minus, plus in cats["other"]:
        print("###", name); print("-", minus[:300]); print("+", plus[:300])
