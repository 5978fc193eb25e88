"""The administrators' dashboard, its side with no Flask: the figures it shows (`figures`), the
chart it draws (`chart`) and the record of ledger verifications (`verify_runs`). The pages
themselves are `creditapp.api.dashboard_pages`; this package reads, and writes only its own
`verify_runs` rows."""
