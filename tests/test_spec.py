"""Event-spec grammar (perf-prof's tep.c rules), wildcards, defaults, durations, and every error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kmemleak_offline.format import tracefs
from kmemleak_offline.format.spec import (
    EventSpec,
    SpecError,
    expand_wildcards,
    parse_duration,
    parse_event,
    parse_list,
    split_list,
    with_defaults,
)

FORMATS = Path(__file__).parent / "data" / "formats"


def fmt_of(name: str) -> tracefs.EventFormat:
    return tracefs.parse_format((FORMATS / f"{name}.format").read_text(), name.split("_")[0])


# --------------------------------------------------------------------------- lists

@pytest.mark.parametrize("text,parts", [
    ("kmem:kmalloc", ["kmem:kmalloc"]),
    ("a:b,c:d", ["a:b", "c:d"]),
    ("a:b,", ["a:b"]),                                             # trailing comma dropped
    ('a:b/name=="x,y"/,c:d', ['a:b/name=="x,y"/', "c:d"]),        # double quotes protect
    ("a:b/name=='x,y'/,c:d", ["a:b/name=='x,y'/", "c:d"]),        # single quotes protect
    ("a:b//size=f(x,(y,z))/,c:d", ["a:b//size=f(x,(y,z))/", "c:d"]),  # nested parens protect
    ("a:b/CPUS{1,2}/,c:d", ["a:b/CPUS{1", "2}/", "c:d"]),          # braces do not
    ("a:b/(x,y/,c:d", ["a:b/(x,y/,c:d"]),                          # unbalanced '(' eats the rest
    ("a:b,,c:d", ["a:b", "", "c:d"]),
])
def test_split_list(text, parts):
    assert split_list(text) == parts


def test_parse_list_parses_each_and_rejects_empty_items():
    specs = parse_list("kmem:kmalloc//ptr=ptr/,kmem:kfree")
    assert [s.full_name for s in specs] == ["kmem:kmalloc", "kmem:kfree"]
    assert specs[0].ptr == "ptr" and specs[1].ptr is None
    with pytest.raises(SpecError, match="empty event in list 'a:b,,c:d'"):
        parse_list("a:b,,c:d")
    with pytest.raises(SpecError, match="empty event list"):
        parse_list("")


# --------------------------------------------------------------------------- one event

def test_plain_event_has_no_sections():
    s = parse_event("kmem:kmalloc")
    assert (s.system, s.name, s.filter, s.ptr, s.size, s.stack, s.max_stack, s.ignored) == (
        "kmem", "kmalloc", None, None, None, False, None, ())
    assert s.full_name == "kmem:kmalloc" and s.text == "kmem:kmalloc"


def test_filter_and_attributes():
    t = "kmem:kmalloc/bytes_alloc > 1024/ptr=ptr/size=bytes_alloc/stack/"
    s = parse_event(t)
    assert s.filter == "bytes_alloc > 1024"
    assert (s.ptr, s.size, s.stack, s.max_stack) == ("ptr", "bytes_alloc", True, None)
    assert s.text == t
    assert s.canonical() == t


def test_empty_filter_is_empty_string():
    s = parse_event("kmem:kfree//")
    assert s.filter == "" and s.ptr is None
    assert parse_event("kmem:kfree//ptr=ptr/").filter == ""


def test_slash_inside_parentheses_stays_in_the_value():
    s = parse_event("kmem:mm_page_alloc//ptr=pfn/size=((4096<<order)/2)/key=pfn/stack/")
    assert s.size == "((4096<<order)/2)"
    assert s.ptr == "pfn" and s.stack
    assert s.ignored == (("key", "pfn"),)


def test_quotes_are_removed_from_name_filter_and_values():
    s = parse_event("""kmem:"kmalloc"/'comm == "a/b"'/ptr="ptr"/size='bytes_req'/""")
    assert s.name == "kmalloc"
    assert s.filter == 'comm == "a/b"'
    assert (s.ptr, s.size) == ("ptr", "bytes_req")
    # quotes only go when they match at both ends
    assert parse_event("""a:b/"x" == 'y'/""").filter == """"x" == 'y'"""
    # an unclosed quote hides the closing '/'
    with pytest.raises(SpecError, match="missing '/'"):
        parse_event("""a:b/"x'/""")


def test_max_stack_implies_stack_and_is_capped():
    s = parse_event("a:b//max-stack=16/")
    assert (s.stack, s.max_stack) == (True, 16)
    assert parse_event("a:b//max-stack=500/").max_stack == 127
    assert parse_event("a:b//max-stack=0/").max_stack == 0


def test_repeated_attribute_overwrites_and_empty_attrs_are_skipped():
    s = parse_event("a:b//ptr=x//ptr=y/size=1/size=2/")
    assert (s.ptr, s.size) == ("y", "2")


def test_ignored_attributes_are_kept_in_order():
    s = parse_event("a:b//alias=foo/cpus=0-3/comm=common_pid/untraced/key=ptr/ptr=ptr/")
    assert s.ignored == (("alias", "foo"), ("cpus", "0-3"), ("comm", "common_pid"),
                         ("untraced", ""), ("key", "ptr"))
    assert s.ptr == "ptr"


@pytest.mark.parametrize("text", [
    "kmem:kmalloc",
    "kmem:kfree//",
    "kmem:kmalloc/bytes_alloc > 1024/ptr=ptr/size=bytes_alloc/stack/",
    "kmem:mm_page_alloc//ptr=pfn/size=((4096<<order)/2)/max-stack=8/alias=pg/",
    """a:b/'x == "p/q"'/ptr=ptr/""",
    "a:b//size=a,b/",  # a comma would split the list: canonical() quotes it
])
def test_canonical_round_trips(text):
    s = parse_event(text)
    c = s.canonical()
    again = parse_event(c)
    assert (again.system, again.name, again.filter, again.ptr, again.size, again.stack,
            again.max_stack, again.ignored) == (s.system, s.name, s.filter, s.ptr, s.size,
                                                s.stack, s.max_stack, s.ignored)
    assert split_list(c) == [c]


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("text,message", [
    ("kmem:kmalloc/bytes_alloc > 10", "missing '/' after filter in 'kmem:kmalloc/bytes_alloc > 10'"),
    ("kmem:kmalloc/", "missing '/' after filter in 'kmem:kmalloc/'"),
    ("kmem:kmalloc//bogus=1/", "Syntax error: Unknown attr bogus"),
    ("kmem:kmalloc//stack/bogus/", "Syntax error: Unknown attr bogus"),
    ("kmem:kfree//ptr=ptr", "Syntax error: ptr=ptr"),
    ("kmem:kfree//ptr=ptr/stack", "Syntax error: stack"),
    ("kmemkmalloc", "missing ':' in event 'kmemkmalloc' (expected sys:name)"),
    ("kmem:", "empty system or event name in 'kmem:'"),
    (":kmalloc", "empty system or event name in ':kmalloc'"),
    ("kmem:''", "empty system or event name in 'kmem:'''"),
    ("a:b//max-stack=abc/", "bad max-stack value 'abc' in 'a:b//max-stack=abc/'"),
    ("a:b//max-stack=-1/", "bad max-stack value '-1' in 'a:b//max-stack=-1/'"),
    ("a:b//max-stack/", "bad max-stack value '' in 'a:b//max-stack/'"),
    ("a:b//ptr/", "Syntax error: ptr needs '=EXPR' in 'a:b//ptr/'"),
])
def test_errors(text, message):
    with pytest.raises(SpecError) as ei:
        parse_event(text)
    assert str(ei.value) == message
    assert "\n" not in str(ei.value)


# --------------------------------------------------------------------------- wildcards

AVAILABLE = ["kmem:kmalloc", "kmem:kfree", "kmem:kmem_cache_alloc", "kmem:kmalloc_node",
             "percpu:percpu_alloc_percpu", "sched:sched_switch"]


def test_wildcards_expand_in_available_order_and_keep_the_suffix():
    specs = parse_list("kmem:kmalloc*//ptr=ptr/stack/,sched:sched_switch")
    out = expand_wildcards(specs, AVAILABLE)
    assert [s.full_name for s in out] == ["kmem:kmalloc", "kmem:kmalloc_node", "sched:sched_switch"]
    assert all(s.ptr == "ptr" and s.stack for s in out[:2])
    assert out[1].text == "kmem:kmalloc_node//ptr=ptr/stack/"
    assert out[2] is specs[1]


@pytest.mark.parametrize("pattern,expected", [
    ("kmem:k?alloc", ["kmem:kmalloc"]),
    ("kmem:[a-k]free", ["kmem:kfree"]),
    ("*:*alloc*", ["kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:kmalloc_node",
                   "percpu:percpu_alloc_percpu"]),
    ("KMEM:*", None),                      # case-sensitive
])
def test_wildcard_patterns(pattern, expected):
    if expected is None:
        with pytest.raises(SpecError, match=re.escape(f"No events matching pattern '{pattern}'")):
            expand_wildcards([parse_event(pattern)], AVAILABLE)
    else:
        assert [s.full_name for s in expand_wildcards([parse_event(pattern)], AVAILABLE)] == expected


def test_wildcard_without_match_is_an_error():
    with pytest.raises(SpecError) as ei:
        expand_wildcards(parse_list("kmem:nothing*//ptr=ptr/"), AVAILABLE)
    assert str(ei.value) == "No events matching pattern 'kmem:nothing*'"


# --------------------------------------------------------------------------- defaults

def test_defaults_from_real_formats():
    km = with_defaults(parse_event("kmem:kmalloc"), fmt_of("kmem_kmalloc"))
    assert (km.ptr, km.size) == ("ptr", "bytes_alloc")
    kf = with_defaults(parse_event("kmem:kfree"), fmt_of("kmem_kfree"))
    assert (kf.ptr, kf.size) == ("ptr", None)
    pc = with_defaults(parse_event("percpu:percpu_alloc_percpu"),
                       fmt_of("percpu_percpu_alloc_percpu"))
    assert (pc.ptr, pc.size) == ("ptr", "bytes_alloc")
    given = with_defaults(parse_event("kmem:kmalloc//ptr=ptr+1/size=bytes_req/"),
                          fmt_of("kmem_kmalloc"))
    assert (given.ptr, given.size) == ("ptr+1", "bytes_req")
    pg = with_defaults(parse_event("kmem:mm_page_alloc//ptr=pfn/size=4096<<order/"),
                       fmt_of("kmem_mm_page_alloc"))
    assert (pg.ptr, pg.size) == ("pfn", "4096<<order")
    assert isinstance(pg, EventSpec)


def test_missing_ptr_is_perf_prof_error():
    with pytest.raises(SpecError) as ei:
        with_defaults(parse_event("kmem:mm_page_alloc"), fmt_of("kmem_mm_page_alloc"))
    assert str(ei.value) == "kmem:mm_page_alloc//ptr=?/ ptr attribute is not set"


# --------------------------------------------------------------------------- --than

@pytest.mark.parametrize("text,ns", [
    ("0", 0), ("10", 10), ("10ns", 10), ("7us", 7_000), ("3ms", 3_000_000),
    ("1s", 1_000_000_000), ("120s", 120 * 10**9),
])
def test_parse_duration(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["10x", "1.5s", "", "-1", "s", "10m", "10S", "10MS", " 10",
                                  "10 s", "10sec", "١٠"])
def test_parse_duration_rejects(text):
    with pytest.raises(SpecError) as ei:
        parse_duration(text)
    assert f"'{text}'" in str(ei.value)
