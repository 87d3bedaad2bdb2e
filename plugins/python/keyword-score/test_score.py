"""Unit tests for scoring.py (plain CPython: `python3 -m unittest` in this directory)."""

import unittest

from scoring import (
    DEFAULT_KEYWORDS,
    KeywordScanner,
    decode_subject,
    parse_bool,
    parse_int,
    parse_keywords,
    score_text,
)

DEFAULTS, _ = parse_keywords(DEFAULT_KEYWORDS)


def stream_score(chunks, keywords=DEFAULTS):
    scanner = KeywordScanner(keywords)
    for chunk in chunks:
        scanner.feed(chunk)
    scanner.finish()
    return scanner.score


class ParseKeywordsTest(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(DEFAULTS, {"viagra": 5, "lottery": 4, "winner": 3, "urgent": 1})

    def test_whitespace_case_and_negative_scores(self):
        keywords, bad = parse_keywords(" Free  Money : 2 ,, newsletter:-1 ,")
        self.assertEqual(keywords, {"free money": 2, "newsletter": -1})
        self.assertEqual(bad, [])

    def test_malformed_entries_are_reported(self):
        keywords, bad = parse_keywords("viagra:5,lottery,:3,winner:x,urgent:1")
        self.assertEqual(keywords, {"viagra": 5, "urgent": 1})
        self.assertEqual(bad, ["lottery", ":3", "winner:x"])

    def test_last_duplicate_wins(self):
        self.assertEqual(parse_keywords("a:1,A:2")[0], {"a": 2})

    def test_empty(self):
        self.assertEqual(parse_keywords(""), ({}, []))


class ParseSettingTest(unittest.TestCase):
    def test_bool(self):
        self.assertTrue(parse_bool(None, True))
        self.assertFalse(parse_bool("false", True))
        self.assertTrue(parse_bool("TRUE", False))
        self.assertFalse(parse_bool('"no"', True))
        with self.assertRaises(ValueError):
            parse_bool("maybe", True)

    def test_int(self):
        self.assertEqual(parse_int(None, 5), 5)
        self.assertEqual(parse_int("7", 5), 7)
        self.assertEqual(parse_int(' "3" ', 5), 3)
        with self.assertRaises(ValueError):
            parse_int("high", 5)


class ScoreTextTest(unittest.TestCase):
    def test_no_keywords_scores_zero(self):
        self.assertEqual(score_text("Meeting notes for Tuesday", DEFAULTS), 0)

    def test_sum_of_distinct_keywords(self):
        self.assertEqual(score_text("URGENT: you are a lottery Winner!", DEFAULTS), 8)

    def test_each_keyword_counts_once(self):
        self.assertEqual(score_text("viagra viagra VIAGRA", DEFAULTS), 5)

    def test_whole_words_only(self):
        self.assertEqual(score_text("winners, urgently, xviagra, viagra2", DEFAULTS), 0)
        self.assertEqual(score_text("(viagra) winner.", DEFAULTS), 8)

    def test_phrases_and_negative_scores(self):
        keywords, _ = parse_keywords("free money:4,free:1,newsletter:-2")
        self.assertEqual(score_text("free money inside", keywords), 4)
        self.assertEqual(score_text("free trial", keywords), 1)
        self.assertEqual(score_text("our free newsletter", keywords), -1)

    def test_regex_characters_are_literal(self):
        keywords, _ = parse_keywords("c++:2,a.b:3")
        self.assertEqual(score_text("I like c++ and axb", keywords), 2)

    def test_no_keywords_configured(self):
        self.assertEqual(score_text("viagra", {}), 0)

    def test_non_ascii(self):
        keywords, _ = parse_keywords("glück:2")
        self.assertEqual(score_text("Viel GLÜCK!", keywords), 2)


class StreamingTest(unittest.TestCase):
    def test_keyword_split_across_chunks(self):
        self.assertEqual(stream_score(["buy via", "gra now"]), 5)
        self.assertEqual(stream_score(["v", "i", "a", "g", "r", "a"]), 5)

    def test_word_continued_in_next_chunk_is_not_a_match(self):
        self.assertEqual(stream_score(["the viagra", "s are"]), 0)
        self.assertEqual(stream_score(["the lottery", "winners"]), 0)

    def test_word_prefixed_in_previous_chunk_is_not_a_match(self):
        self.assertEqual(stream_score(["a long line ending in x", "viagra"]), 0)
        self.assertEqual(stream_score(["x" * 100, "viagra"]), 0)

    def test_keyword_at_end_of_stream(self):
        self.assertEqual(stream_score(["you are the ", "winner"]), 3)

    def test_long_stream_keeps_a_short_tail(self):
        scanner = KeywordScanner(DEFAULTS)
        for _ in range(1000):
            scanner.feed("lorem ipsum dolor sit amet\r\n" * 10)
        scanner.feed("urgent\r\n")
        scanner.finish()
        self.assertEqual(scanner.score, 1)
        self.assertLessEqual(len(scanner._tail), len("lottery") + 1)

    def test_subject_and_body_share_one_score(self):
        scanner = KeywordScanner(DEFAULTS)
        scanner.scan("You are a winner")
        scanner.feed("winner of our lottery")
        scanner.finish()
        self.assertEqual(scanner.score, 7)
        self.assertEqual(scanner.hits(), ["lottery:4", "winner:3"])


class DecodeSubjectTest(unittest.TestCase):
    def test_plain_and_folded(self):
        self.assertEqual(decode_subject("Hello\r\n world"), "Hello world")

    def test_encoded_words(self):
        self.assertEqual(decode_subject("=?UTF-8?B?V2lubmVyIQ==?="), "Winner!")
        self.assertEqual(decode_subject("=?iso-8859-1?q?gl=FCck?= now"), "glück now")

    def test_bad_charset_is_left_alone(self):
        self.assertEqual(decode_subject("=?x-nonsense?q?abc?="), "=?x-nonsense?q?abc?=")


if __name__ == "__main__":
    unittest.main()
