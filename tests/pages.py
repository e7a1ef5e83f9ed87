"""The status page as a browser reads it: the tags it may hold, and its rows, apps, errors
and text, parsed from the HTML (for the page's tests, in process and in Chromium)."""

from __future__ import annotations

from html.parser import HTMLParser

# Every tag the page may contain: anything else came from a value that was not escaped.
ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "p",
    "ul",
    "li",
    "a",
    "section",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "span",
    "code",
}


class Page(HTMLParser):
    """The parts of a rendered page the tests look at, as a browser would read them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: dict[str, dict[str, str]] = {}  # livestream id -> td class -> text
        self.apps: dict[tuple[str, str], dict[str, str]] = {}  # (account, app) -> class -> text
        self.errors: list[list[str]] = []  # rows of the error table, cell texts
        self.tables: dict[str, list[list[str]]] = {}  # table id or class -> rows of cell texts
        self.text_parts: list[str] = []
        self._table: str | None = None
        self._row: dict[str, str] | None = None
        self._cells: list[str] | None = None
        self._cell: str | None = None
        self._buf: list[str] = []
        self.feed(text)
        self.close()

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def table(self, name: str) -> list[list[str]]:
        """The rows (cell texts, header rows left out) of the table of that id or class."""
        return self.tables.get(name, [])

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if tag == "table":
            self._table = found.get("id") or found.get("class")
        elif tag == "tr":
            self._cells = []
            if found.get("data-livestream-id") is not None:
                self._row = self.rows.setdefault(str(found["data-livestream-id"]), {})
            elif self._table == "apps" and found.get("data-app-id") is not None:
                key = (str(found["data-account-id"]), str(found["data-app-id"]))
                self._row = self.apps.setdefault(key, {})
            else:
                self._row = None
        elif tag == "td":
            self._cell = (found.get("class") or "").split(" ")[-1]
            self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            text = " ".join("".join(self._buf).split())
            if self._row is not None and self._cell:
                self._row[self._cell] = text
            if self._cells is not None:
                self._cells.append(text)
            self._cell = None
        elif tag == "tr":
            if self._table is not None and self._cells:
                self.tables.setdefault(self._table, []).append(self._cells)
            if self._table == "errors" and self._cells:
                self.errors.append(self._cells)
            self._row = self._cells = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)
        if self._cell is not None:
            self._buf.append(data)
