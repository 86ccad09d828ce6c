"""A page's form as a browser would submit it untouched: every field's current value, for a
test driving the console over HTTP to change one of them."""

from html.parser import HTMLParser

# Inputs a browser does not send unless they were clicked (or chosen: a file).
_UNSENT = {"submit", "button", "image", "reset", "file"}


def form_values(page: str, form_id: str) -> list[tuple[str, str]]:
    """The (name, value) pairs the form with this id sends as it stands."""
    reader = _FormReader(form_id)
    reader.feed(page)
    reader.close()
    assert reader.found, f"no form {form_id!r} in the page"
    return reader.values


class _FormReader(HTMLParser):
    def __init__(self, form_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form_id = form_id
        self.found = self.inside = False
        self.values: list[tuple[str, str]] = []
        # The select being read: its name, its options' values, the chosen ones, and whether
        # it takes several (then none chosen sends none; else the first is chosen).
        self.select: tuple[str, list[str], list[str], bool] | None = None
        self.textarea: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        if tag == "form" and attr.get("id") == self.form_id:
            self.found = self.inside = True
        if not self.inside:
            return
        name = attr.get("name", "")
        if tag == "input" and name and attr.get("type", "text") not in _UNSENT:
            if attr.get("type") not in ("checkbox", "radio") or "checked" in attr:
                self.values.append((name, attr.get("value", "on")))
        elif tag == "select" and name:
            self.select = (name, [], [], "multiple" in attr)
        elif tag == "option" and self.select is not None:
            self.select[1].append(attr.get("value", ""))
            if "selected" in attr:
                self.select[2].append(attr.get("value", ""))
        elif tag == "textarea" and name:
            self.textarea = (name, [])

    def handle_data(self, data: str) -> None:
        if self.textarea is not None:
            self.textarea[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select" and self.select is not None:
            name, options, chosen, several = self.select
            self.values.extend(
                (name, value) for value in chosen or ([] if several else options[:1])
            )
            self.select = None
        elif tag == "textarea" and self.textarea is not None:
            self.values.append((self.textarea[0], "".join(self.textarea[1]).removeprefix("\n")))
            self.textarea = None
