# shellcheck shell=bash
# Sourced by scripts/bootstrap: headless Chromium for the tests that open the HTML
# report in a real browser (a screenshot, and no console error).

EXTRA_USAGE+="  chromium      Debian's chromium and a font, for the tests that open the HTML
                report headless (screenshot, console errors)
"

component_chromium() {
  # Without a font the screenshot would show boxes where the text is.
  install_missing chromium=chromium /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf=fonts-dejavu-core
  say "chromium: $(chromium --version 2>/dev/null | tail -n 1)"
}
