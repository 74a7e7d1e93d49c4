"""Parsers that turn scanner output (nmap XML, masscan JSON, gobuster text) into result models.

Pure functions over bytes: they never run a scanner and never raise on bad output; a partial or
hostile document yields what could be read plus a reason.
"""
